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
        # A frozen trunk is a fixed function of the text: pooled outputs are cached so
        # epochs after the first never run MiniLM again (it dominates CPU time). Serving
        # sets `cache_outputs = False`: its inputs rarely repeat and a server must not grow.
        self._cache: dict[str, torch.Tensor] = {}
        self.cache_outputs = True

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
        if not self.frozen():
            return self._encode(texts)
        if not self.cache_outputs:
            with torch.no_grad():
                return self._encode(texts)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), 256):
                    chunk = missing[start : start + 256]
                    pooled = self._encode(chunk).float().cpu()
                    self._cache.update(zip(chunk, pooled, strict=True))
        device = next(self.model.parameters()).device
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def cache_size(self) -> int:
        return len(self._cache)
