"""The text trunk: a pretrained sentence encoder (all-MiniLM-L6-v2 by default), mean
pooling over real tokens, frozen or last-N-layers tuned; while frozen, pooled outputs are
cached per text."""

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

    def train(self, mode: bool = True) -> TextTrunk:
        super().train(mode)
        if self.frozen():
            self.model.eval()  # no dropout in a frozen trunk, so cached outputs stay valid
        return self

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        return masked_mean(hidden, tokens["attention_mask"])

    def forward(self, texts: list[str]) -> torch.Tensor:
        # Cached by the text itself (Trunk.cached): MiniLM dominates CPU time.
        return self.cached(texts, lambda rows: self._encode([texts[r] for r in rows]))
