"""Targets for distillation: the model itself (active), a momentum copy (EMA) or the initial weights (frozen)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` (unwrapped from DDP), for the ``ema`` and ``frozen`` target modes."""
    teacher = copy.deepcopy(getattr(model, "module", model))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def update_ema(teacher: nn.Module, model: nn.Module, momentum: float = 0.99) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * model``; buffers are copied."""
    model = getattr(model, "module", model)
    for t, s in zip(teacher.parameters(), model.parameters()):
        t.lerp_(s.detach().to(t.dtype), 1 - momentum)
    for t, s in zip(teacher.buffers(), model.buffers()):
        t.copy_(s)
