"""The aligned multimodal encoder: trunk + projection per modality, one shared space.

Modules are kept in `nn.ModuleDict`s keyed by `Modality` value (ImageBind style), so adding
a modality adds an entry, not a copy of the code. Every embedding is projected to
`embed_dim` and L2-normalised; `logit_scale` is CLIP's learnable log temperature.

A batch is a dict: "text" (list of str or None), "image" (uint8 [B, S, S, 3]), "audio"
(float [B, n_mels, frames]) and "present" ({modality: bool [B]}); see training/data.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dualmedia.contract import Modality
from dualmedia.media import MediaConfig
from training.config import ModelConfig
from training.encoders import Trunk, build_trunk

Batch = dict[str, Any]


def _projection(kind: str, hidden: int, embed_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(hidden, embed_dim)
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))


class MultimodalEncoder(nn.Module):
    def __init__(self, modalities: list[Modality], config: ModelConfig, media: MediaConfig) -> None:
        super().__init__()
        self.modalities = [m.value for m in Modality if m in modalities]  # canonical order
        self.embed_dim = config.embed_dim
        self.trunks = nn.ModuleDict(
            {
                m: build_trunk(Modality(m), config.encoders.for_modality(m), media)
                for m in self.modalities
            }
        )
        self.projections = nn.ModuleDict(
            {
                m: _projection(config.projection, self.trunk(m).hidden_size, config.embed_dim)
                for m in self.modalities
            }
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))

    def trunk(self, modality: str) -> Trunk:
        return self.trunks[modality]  # type: ignore[return-value]

    def _select(self, modality: str, batch: Batch, rows: torch.Tensor) -> Any:
        if modality == Modality.TEXT:
            texts = batch["text"]
            return [texts[i] if texts[i] is not None else "" for i in rows.tolist()]
        return batch[modality][rows]

    def encode(self, modality: str, batch: Batch, present: torch.Tensor) -> torch.Tensor:
        """L2-normalised [B, D] embeddings of one modality; zero rows where it is missing."""
        rows = present.nonzero(as_tuple=True)[0]
        out = torch.zeros(len(present), self.embed_dim, device=present.device)
        if len(rows) == 0:
            if self.training and len(present) > 0:
                # Under DDP every rank must use every trainable parameter in each step; a
                # batch without this modality still runs one row through it, weighted 0.
                dummy = self.projections[modality](
                    self.trunks[modality](
                        self._select(modality, batch, torch.zeros(1, dtype=torch.long))
                    )
                )
                out = out + 0.0 * dummy.sum()
            return out
        pooled = self.trunks[modality](self._select(modality, batch, rows.cpu()))
        embedded = F.normalize(self.projections[modality](pooled).float(), dim=-1)
        return out.index_put((rows,), embedded)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        present = batch["present"]
        return {m: self.encode(m, batch, present[m]) for m in self.modalities}

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of free texts (zero-shot prompts, text queries)."""
        device = self.logit_scale.device
        present = torch.ones(len(texts), dtype=torch.bool, device=device)
        return self.encode(Modality.TEXT.value, {"text": texts}, present)

    def clamp_logit_scale(self) -> None:
        """OpenCLIP: keep the temperature in [1, 100] (log scale [0, log 100])."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(100.0))

    def reproducible_state_keys(self) -> set[str]:
        """State-dict keys (relative to this module) that a rebuild restores by itself:
        frozen parameters and the buffers of pretrained trunks. They are left out of
        checkpoints and saved weights (a frozen MiniLM is 90 MB of nothing new)."""
        keys: set[str] = set()
        for m in self.modalities:
            trunk = self.trunk(m)
            if trunk.pretrained is None:
                continue
            # Only the checkpoint's own module: buffers set from data (audio normalisation)
            # live on the trunk itself and are saved.
            keys |= {
                f"trunks.{m}.model.{k}"
                for k in trunk.model.state_dict()
                if k not in trunk.tuned_keys
            }
        return keys
