"""OpenCLIP's ClipLoss generalised to N modalities with missing items.

For every pair of modalities, the items holding both are compared: scaled cosine
similarities, symmetric cross-entropy (each item must find its partner among the others
in both directions). Items missing either modality are left out of that pair: not
zero-filled, which would make them false negatives. The loss is the weighted mean over
the pairs that have at least two such items (`pair_weights`, default 1 each: a pair
whose two sides share only the label can weigh less). Features and presence masks are
gathered across ranks with gradients (`local_loss=False, gather_with_grad=True` in
OpenCLIP terms).

With `groups` (supervised contrastive), items of the same group (the same class of a
label; -1 = unknown, only itself) are all positives of each other: the target of a row
is spread evenly over them, so two photos of digit 3 are not pushed apart as negatives.
With `item_share` s as well, a row's target is s on the item itself and 1 - s spread over
its group: same-class items are no negatives, yet an item's own partner still ranks first.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from training.models.distributed import gather_no_grad, gather_with_grad


def pair_name(a: str, b: str) -> str:
    return f"{a}_{b}"


def pair_names(modalities: list[str]) -> list[str]:
    """Every pair the loss can count, in the order `ClipLoss` visits them."""
    return [pair_name(a, b) for a, b in combinations(modalities, 2)]


def symmetric_clip_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: torch.Tensor | None = None,
    item_share: float = 0.0,
) -> torch.Tensor:
    """CLIP loss of row-aligned, L2-normalised features a[i] <-> b[i]; with `groups` [N],
    every j of i's group (>= 0) is a positive of i as well, sharing 1 - `item_share` of
    the target (i itself keeps `item_share` besides its part of the group's)."""
    logits = logit_scale.exp() * a @ b.T
    if groups is None:
        targets: torch.Tensor = torch.arange(len(a), device=a.device)
    else:
        eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
        same = ((groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)) | eye
        targets = same.float() / same.sum(1, keepdim=True)  # symmetric: same.T == same
        targets = item_share * eye.float() + (1.0 - item_share) * targets
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ClipLoss(nn.Module):
    def __init__(
        self, pair_weights: dict[str, float] | None = None, item_share: float = 0.0
    ) -> None:
        super().__init__()
        self.pair_weights = dict(pair_weights or {})
        self.item_share = item_share

    def forward(
        self,
        features: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        logit_scale: torch.Tensor,
        groups: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the loss of each pair that counted.

        `features`: {modality: [B, D]} L2-normalised (rows of missing items are ignored);
        `present`: {modality: bool [B]}; `logit_scale`: the log temperature (a scalar);
        `groups`: long [B] for supervised contrastive (None: only the item itself).
        """
        modalities = list(features)
        gathered = {m: gather_with_grad(features[m]) for m in modalities}
        masks = {m: gather_no_grad(present[m].to(torch.uint8)).bool() for m in modalities}
        everyone = gather_no_grad(groups) if groups is not None else None
        pair_losses: dict[str, torch.Tensor] = {}
        for a, b in combinations(modalities, 2):
            both = masks[a] & masks[b]
            if int(both.sum()) < 2:  # one item has nothing to be contrasted with
                continue
            pair_losses[pair_name(a, b)] = symmetric_clip_loss(
                gathered[a][both],
                gathered[b][both],
                logit_scale,
                everyone[both] if everyone is not None else None,
                self.item_share,
            )
        weights = {name: self.pair_weights.get(name, 1.0) for name in pair_losses}
        if not pair_losses or sum(weights.values()) == 0:
            # Keep the graph connected (DDP and the optimizer expect a differentiable loss).
            zero = sum(f.sum() for f in features.values()) * 0.0 + logit_scale * 0.0
            return zero, pair_losses
        total = sum(weights[n] * loss for n, loss in pair_losses.items()) / sum(weights.values())
        return total, pair_losses
