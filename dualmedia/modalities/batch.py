"""The one batch builder: per-item model inputs -> a batch keyed by modality.

A batch is a dict:
    "inputs":  {modality: what its trunk reads (collated by the modality, padded)}
    "present": {modality: bool [B]}
Training adds "ids", "index" and "labels"; serving, the pyfunc model, evaluation, the
feature-store publish and monitoring build theirs with this same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dualmedia.modalities import get

Batch = dict[str, Any]


def assemble_batch(
    items: Sequence[Mapping[str, Any]], modalities: Sequence[str], media: Any
) -> Batch:
    """`items`: one mapping per item, modality -> model input (absent or None: missing)."""
    inputs: dict[str, Any] = {}
    present: dict[str, torch.Tensor] = {}
    for m in modalities:
        values = [item.get(m) for item in items]
        inputs[m] = get(m).collate(values, media)
        present[m] = torch.tensor([v is not None for v in values], dtype=torch.bool)
    return {"inputs": inputs, "present": present}
