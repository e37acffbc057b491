"""Fusion of the aligned per-modality embeddings into label predictions.

Modes (FusionConfig.mode):
  gated  : the modality embeddings are tokens of a small transformer (cross-modal
           attention, missing modalities masked out with a key padding mask); a learned
           gate scores each output token, a softmax over the present modalities weighs
           them, and the weighted sum feeds the label heads. The gate weights say which
           modality drove a prediction.
  early  : concatenation of [embedding * present, present flag] per modality, then an MLP.
Both also give the heads each pair's agreement (cosine similarity in the aligned space).
  late   : per-modality heads, logits averaged over the present modalities.
  hybrid : the mean of the gated and the late logits.
Every mode also has unimodal heads (one per modality, trained alongside): their
predictions say what each modality alone suggests, for disagreement flags. Heads are
built from the dataset's label schema: one classifier per label with that label's number
of classes (binary labels have two).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch
from torch import nn

from dualmedia.contract import DatasetSpec
from training.models.config import FusionConfig


def label_classes(spec: DatasetSpec) -> dict[str, list[str]]:
    """Class names of every label of the schema, in the schema's order."""
    return {name: list(label.classes) for name, label in spec.labels.items()}


@dataclass
class FusionOutput:
    logits: dict[str, torch.Tensor]  # label -> [B, n_classes], fused
    gates: torch.Tensor  # [B, n_modalities], weight of each modality (0 where missing)
    unimodal: dict[str, dict[str, torch.Tensor]]  # modality -> label -> [B, n_classes]


class LabelHeads(nn.Module):
    """One linear classifier per label, sized by the schema."""

    def __init__(self, in_dim: int, classes: dict[str, list[str]]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(in_dim, len(c)) for name, c in classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(x) for name, head in self.heads.items()}


class UnimodalHead(nn.Module):
    """A linear probe per label on one modality's embedding. Deliberately shallow: deeper
    heads on the L2-normalised embedding trained the encoders markedly worse."""

    def __init__(self, embed_dim: int, classes: dict[str, list[str]], config: FusionConfig):
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(embed_dim), nn.Dropout(config.dropout))
        self.heads = LabelHeads(embed_dim, classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.body(x))


class FusionHead(nn.Module):
    def __init__(
        self,
        modalities: list[str],
        classes: dict[str, list[str]],
        embed_dim: int,
        config: FusionConfig,
    ) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.mode = config.mode
        self.pairs = list(combinations(range(len(self.modalities)), 2))
        # Agreement features per pair: embedding cosine + both-present flag, and the joint
        # distribution (outer product) of the two unimodal predictions of each label.
        joint = sum(len(c) ** 2 for c in classes.values())
        self.agreement_width = len(self.pairs) * (2 + joint)
        hidden = config.hidden_size
        self.unimodal = nn.ModuleDict(
            {m: UnimodalHead(embed_dim, classes, config) for m in self.modalities}
        )
        if self.mode in ("gated", "hybrid"):
            self.token_in = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden))
            self.modality_tokens = nn.Parameter(torch.randn(len(self.modalities), hidden) * 0.02)
            layer = nn.TransformerEncoderLayer(
                hidden,
                config.num_heads,
                dim_feedforward=2 * hidden,
                dropout=config.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.attention = nn.TransformerEncoder(
                layer, config.num_layers, enable_nested_tensor=False
            )
            self.gate = nn.Linear(hidden, 1)
            # The transformer layer is the non-linear part; the heads read its gated output.
            self.fused_body = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(config.dropout))
            self.fused_heads = LabelHeads(hidden + self.agreement_width, classes)
        elif self.mode == "early":
            width = len(self.modalities) * (embed_dim + 1) + self.agreement_width
            # One hidden layer: interactions (words vs voice) need a non-linearity.
            self.fused_body = nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, hidden),
                nn.GELU(),
                nn.Dropout(config.dropout),
            )
            self.fused_heads = LabelHeads(hidden, classes)

    def forward(
        self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
    ) -> FusionOutput:
        mask = torch.stack([present[m] for m in self.modalities], dim=1)  # [B, M] bool
        unimodal = {m: self.unimodal[m](embeddings[m]) for m in self.modalities}
        uniform = mask.float() / mask.float().sum(1, keepdim=True).clamp(min=1.0)
        late = self._late(unimodal, uniform)
        if self.mode == "late":
            return FusionOutput(late, uniform, unimodal)
        if self.mode == "early":
            parts = [
                torch.cat([embeddings[m] * mask[:, i : i + 1], mask[:, i : i + 1].float()], 1)
                for i, m in enumerate(self.modalities)
            ]
            parts.append(self._agreement(embeddings, mask, unimodal))
            logits = self.fused_heads(self.fused_body(torch.cat(parts, dim=1)))
            return FusionOutput(logits, uniform, unimodal)
        logits, gates = self._gated(embeddings, mask, self._agreement(embeddings, mask, unimodal))
        if self.mode == "hybrid":
            logits = {name: (logits[name] + late[name]) / 2 for name in logits}
        return FusionOutput(logits, gates, unimodal)

    def _late(
        self, unimodal: dict[str, dict[str, torch.Tensor]], weights: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        labels = unimodal[self.modalities[0]].keys()
        return {
            name: sum(
                unimodal[m][name] * weights[:, i : i + 1] for i, m in enumerate(self.modalities)
            )
            for name in labels
        }

    def _gated(
        self, embeddings: dict[str, torch.Tensor], mask: torch.Tensor, agreement: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        tokens = torch.stack([embeddings[m] for m in self.modalities], dim=1)  # [B, M, D]
        tokens = self.token_in(tokens) + self.modality_tokens
        # An item with nothing present (possible in ablations) attends to its first,
        # empty token instead of to nothing (which would give NaN); its gates are all 0.
        empty = ~mask.any(dim=1)
        attend = mask.clone()
        attend[empty, 0] = True
        hidden = self.attention(tokens, src_key_padding_mask=~attend)
        scores = self.gate(hidden).squeeze(-1).masked_fill(~attend, float("-inf"))
        gates = torch.softmax(scores, dim=1) * (~empty).unsqueeze(1)
        fused = (hidden * torch.softmax(scores, dim=1).unsqueeze(-1)).sum(dim=1)
        features = torch.cat([self.fused_body(fused), agreement], dim=1)
        return self.fused_heads(features), gates

    def _agreement(
        self,
        embeddings: dict[str, torch.Tensor],
        mask: torch.Tensor,
        unimodal: dict[str, dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """How far the modalities agree, per pair (zeros unless both are present): the
        cosine of their aligned embeddings, a both-present flag, and the joint distribution
        of what their unimodal heads predict for each label (detached: these heads learn
        from their own loss). Disagreement labels (words vs voice) are about exactly this,
        and a weighted sum of tokens does not express it easily."""
        stacked = torch.stack([embeddings[m] for m in self.modalities], dim=1)
        probs = {
            m: {name: torch.softmax(v.detach(), dim=1) for name, v in unimodal[m].items()}
            for m in self.modalities
        }
        features = []
        for i, j in self.pairs:
            a, b = self.modalities[i], self.modalities[j]
            both = (mask[:, i] & mask[:, j]).float().unsqueeze(1)
            cosine = (stacked[:, i] * stacked[:, j]).sum(-1, keepdim=True)
            joint = [
                (probs[a][name].unsqueeze(2) * probs[b][name].unsqueeze(1)).flatten(1)
                for name in probs[a]
            ]
            features.append(torch.cat([cosine, torch.ones_like(cosine), *joint], dim=1) * both)
        if not features:
            return stacked.new_zeros(len(stacked), 0)
        return torch.cat(features, dim=1)
