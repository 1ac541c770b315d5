"""AdamW with open_clip's weight-decay exclusions, and open_clip's warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """open_clip_train's rule: gains and biases (ndim < 2, ``ln``/``bn``/``bias`` names) and the logit scale."""
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98), eps=1e-6):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if no_weight_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_weight_decay(n, p)], "weight_decay": weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """open_clip's ``cosine_lr``: linear warm-up ``base*(step+1)/warmup``, then half a cosine to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
