"""Gathering across ranks so that contrastive negatives are the global batch (a no-op on one process)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..core.distributed import world


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, gradients flowing back to each rank's own slice."""
    if world()[1] == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)


def gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (labels, masks, token ids) from every rank along dim 0."""
    if world()[1] == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world()[1])]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)
