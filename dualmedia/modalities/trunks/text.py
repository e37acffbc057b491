"""The text trunk: a pretrained sentence encoder (all-MiniLM-L6-v2 by default), mean
pooling over real tokens, frozen or last-N-layers tuned; while frozen, pooled outputs are
cached per text (Trunk.cached)."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from dualmedia.modalities.text import TextEncoder
from dualmedia.modalities.trunks.base import Trunk, load_pretrained, masked_mean, resolve_pretrained


class TextTrunk(Trunk):
    """A pretrained text transformer with mean pooling over real tokens."""

    def __init__(self, config: TextEncoder) -> None:
        super().__init__()
        if config.pretrained is None:
            raise ValueError("text encoder: needs `pretrained` (no from-scratch text model)")
        self.pretrained = config.pretrained
        path = resolve_pretrained(config.pretrained)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = load_pretrained(config.pretrained, "text")
        self.max_tokens = config.max_tokens
        self.hidden_size = int(self.model.config.hidden_size)
        self._set_trainable(config.trainable_layers)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        return masked_mean(hidden, tokens["attention_mask"])

    def forward(self, texts: list[str]) -> torch.Tensor:
        if not self.frozen():
            return self._encode(texts)
        return self.cached(texts, lambda rows: self._encode_chunked([texts[i] for i in rows]))

    def _encode_chunked(self, texts: list[str]) -> torch.Tensor:
        return torch.cat([self._encode(texts[i : i + 256]) for i in range(0, len(texts), 256)])
