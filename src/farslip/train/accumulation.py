"""Gradient accumulation (``optim.accum_steps``, the official ``--accum-freq``): one optimiser step from the
gradients of several micro-batches, for a global batch that does not fit in memory at once.

The loader hands the step one large batch (``batch_size x accum_steps`` samples per process, in the order a run
with that batch size would read them); it is cut into ``accum_steps`` micro-batches, each goes forward and
backward on its own with its loss divided by ``accum_steps``, and the gradients add up in ``.grad``. DDP
all-reduces only on the last micro-batch (``no_sync`` before it).

What this equals:

* terms that are a mean over samples (patch-to-patch distillation, and every per-sample term): exactly the
  large batch's loss and gradient (the mean of equal-sized means is the mean), up to float summation order;
* the contrastive terms (global ITC, region-category alignment): each micro-batch contrasts its own samples
  (gathered over the processes), so the negatives are ``batch_size x processes``, not the whole global batch.
  This was chosen over open_clip's ``--accum-freq`` method (open_clip_train/train.py ``_train_step_eager``: a
  no-grad forward of every micro-batch caches the features, then each micro-batch is run again with grad and
  scored against the cached features of the others), which does give the large batch's contrastive gradient
  but costs a second forward pass of every view, needs every loss term split into "features" and "loss from
  features" (the distillation's active targets and the multi-positive region labels included), and -- as that
  code stands -- adds the logit scale's gradient once per micro-batch. Accumulation here is for fitting a
  batch in memory with the same per-sample objective; a recipe that needs the paper's 160 negatives should keep
  ``batch_size x processes`` at 160.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn


def micro_batches(batch: dict[str, torch.Tensor], steps: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` cut along its first dimension into ``steps`` equal parts (views, no copies)."""
    if steps == 1:
        return [batch]
    n = batch["images"].shape[0]
    if n % steps:
        raise ValueError(f"a batch of {n} cannot be cut into {steps} equal micro-batches")
    size = n // steps
    return [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(steps)]


def accumulate_gradients(step_module: nn.Module, batch: dict, teacher: nn.Module | None, autocast: Callable,
                         scaler: torch.amp.GradScaler | None, steps: int) -> dict[str, torch.Tensor]:
    """Forward and backward ``batch`` in ``steps`` micro-batches; the losses returned are their means."""
    parts = micro_batches(batch, steps)
    means: dict[str, torch.Tensor] = {}
    for i, part in enumerate(parts):
        with _no_sync(step_module, last=i == len(parts) - 1):
            with autocast():
                losses = step_module(part, teacher)
            loss = losses["total"] if steps == 1 else losses["total"] / steps
            (scaler.scale(loss) if scaler else loss).backward()
        if steps == 1:
            return losses
        for key, value in losses.items():
            means[key] = means.get(key, 0) + value.detach() / steps
    return means


def _no_sync(module: nn.Module, last: bool):
    """DDP's ``no_sync`` for every micro-batch but the last (one gradient all-reduce per optimiser step)."""
    inner = getattr(module, "_orig_mod", module)  # a torch.compile'd module wraps the DDP one
    if last or not isinstance(inner, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return inner.no_sync()
