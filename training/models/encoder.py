"""The aligned multimodal encoder: trunk + projection per modality, one shared space.

Modules are kept in `nn.ModuleDict`s keyed by modality name (ImageBind style): the trunk
of each comes from the modality registry, so adding a modality adds an entry, not a copy
of the code. Every embedding is projected to `embed_dim` and L2-normalised; `logit_scale`
is CLIP's learnable log temperature.

A batch is keyed by modality: {"inputs": {m: collated input}, "present": {m: bool [B]}}
(dualmedia/modalities/batch.py builds it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dualmedia import modalities
from dualmedia.modalities import MediaConfig
from dualmedia.modalities.batch import Batch
from dualmedia.modalities.trunks.base import Trunk
from training.models.config import ModelConfig


def _projection(kind: str, hidden: int, embed_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(hidden, embed_dim)
    return nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))


class MultimodalEncoder(nn.Module):
    def __init__(self, names: list[str], config: ModelConfig, media: MediaConfig) -> None:
        super().__init__()
        self.modalities = modalities.ordered(names)  # canonical order
        self.embed_dim = config.embed_dim
        self.trunks = nn.ModuleDict(
            {
                m: modalities.get(m).build_trunk(config.encoders.for_modality(m), media)
                for m in self.modalities
            }
        )
        for m in self.modalities:
            self.trunk(m).attach({n: self.trunk(n) for n in self.modalities})
        self.projections = nn.ModuleDict(
            {
                m: _projection(config.projection, self.trunk(m).hidden_size, config.embed_dim)
                for m in self.modalities
            }
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))

    def trunk(self, modality: str) -> Trunk:
        return self.trunks[modality]  # type: ignore[return-value]

    def cache_outputs(self, enabled: bool) -> None:
        """Turn the frozen trunks' output caches (text by string, Whisper by clip) on or
        off. Servers turn them off: their inputs rarely repeat and a server must not grow."""
        for m in self.modalities:
            trunk = self.trunk(m)
            if hasattr(trunk, "cache_outputs"):
                trunk.cache_outputs = enabled

    def encode(self, modality: str, batch: Batch, present: torch.Tensor) -> torch.Tensor:
        """L2-normalised [B, D] embeddings of one modality; zero rows where it is missing."""
        spec = modalities.get(modality)
        inputs = batch["inputs"][modality]
        rows = present.nonzero(as_tuple=True)[0]
        out = torch.zeros(len(present), self.embed_dim, device=present.device)
        if len(rows) == 0:
            if self.training and len(present) > 0:
                # Under DDP every rank must use every trainable parameter in each step; a
                # batch without this modality still runs one row through it, weighted 0.
                first = torch.zeros(1, dtype=torch.long)
                dummy = self.projections[modality](
                    self.trunks[modality](spec.select(inputs, first))
                )
                out = out + 0.0 * dummy.sum()
            return out
        pooled = self.trunks[modality](spec.select(inputs, rows.cpu()))
        embedded = F.normalize(self.projections[modality](pooled).float(), dim=-1)
        return out.index_put((rows,), embedded)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        present = batch["present"]
        return {m: self.encode(m, batch, present[m]) for m in self.modalities}

    @property
    def prompt_modality(self) -> str | None:
        """The modality that embeds zero-shot prompts (text), if this model has it."""
        return next((m for m in self.modalities if modalities.get(m).encodes_prompts), None)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Embeddings of free prompts (zero-shot class prompts, text queries)."""
        modality = self.prompt_modality
        if modality is None:
            raise ValueError(f"this model has no modality that embeds prompts ({self.modalities})")
        device = self.logit_scale.device
        present = torch.ones(len(prompts), dtype=torch.bool, device=device)
        return self.encode(modality, {"inputs": {modality: prompts}}, present)

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
