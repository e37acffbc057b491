"""Distributed helpers (OpenCLIP's distributed.py): rank queries and feature gathering.

Contrastive losses need every rank's features: each rank computes the loss over the whole
global batch, with gradients flowing back through the gather (`gather_with_grad`), so
N ranks with batch B give the loss and (after DDP's gradient averaging) the gradients of
one process with batch N*B. Every rank must pass tensors of the same shape. Weighted
means (the label losses) divide by the weight summed over ranks (`sum_over_ranks`) for
the same reason.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks in rank order; gradients reach every rank's input."""
    if not is_distributed():
        return tensor
    return torch.cat(dist_fn.all_gather(tensor), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks (masks, labels: nothing to differentiate)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all ranks (a count, a weight: nothing to differentiate)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def is_launcher_rank_zero() -> bool:
    """False in the worker processes a DDP launcher starts (Lightning's subprocess
    launcher, torchrun, SLURM), which re-run the entry point: only the first process of the
    first node creates MLflow runs and writes run state."""
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        if int(os.environ.get(variable, "0") or 0) != 0:
            return False
    return True
