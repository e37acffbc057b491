"""OpenCLIP's ClipLoss generalised to N modalities with missing items.

For every pair of modalities, the items holding both are compared: scaled cosine
similarities, symmetric cross-entropy (each item must find its partner among the others
in both directions). Items missing either modality are left out of that pair: not
zero-filled, which would make them false negatives. The loss is the mean over the pairs
that have at least two such items. Features and presence masks are gathered across
ranks with gradients (`local_loss=False, gather_with_grad=True` in OpenCLIP terms).
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.distributed import gather_no_grad, gather_with_grad


def pair_name(a: str, b: str) -> str:
    return f"{a}_{b}"


def symmetric_clip_loss(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP loss of row-aligned, L2-normalised features a[i] <-> b[i]."""
    logits = logit_scale.exp() * a @ b.T
    targets = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ClipLoss(nn.Module):
    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        logit_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the loss of each pair that counted.

        `features`: {modality: [B, D]} L2-normalised (rows of missing items are ignored);
        `present`: {modality: bool [B]}; `logit_scale`: the log temperature (a scalar).
        """
        modalities = list(features)
        gathered = {m: gather_with_grad(features[m]) for m in modalities}
        masks = {m: gather_no_grad(present[m].to(torch.uint8)).bool() for m in modalities}
        pair_losses: dict[str, torch.Tensor] = {}
        for a, b in combinations(modalities, 2):
            both = masks[a] & masks[b]
            if int(both.sum()) < 2:  # one item has nothing to be contrasted with
                continue
            pair_losses[pair_name(a, b)] = symmetric_clip_loss(
                gathered[a][both], gathered[b][both], logit_scale
            )
        if not pair_losses:
            # Keep the graph connected (DDP and the optimizer expect a differentiable loss).
            zero = sum(f.sum() for f in features.values()) * 0.0 + logit_scale * 0.0
            return zero, {}
        total = torch.stack(list(pair_losses.values())).mean()
        return total, pair_losses
