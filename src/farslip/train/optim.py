"""AdamW with open_clip's weight-decay exclusions, and open_clip's warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """open_clip_train's rule: gains and biases (ndim < 2, ``ln``/``bn``/``bias`` names) and the logit scale."""
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def fused_adamw_supported(params) -> bool:
    """Whether torch's fused AdamW kernel can update all of ``params`` (floating point, one supported device)."""
    params = list(params)
    devices = {p.device.type for p in params}
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:  # pragma: no cover - older torch
        supported = {"cuda"}
    return bool(params) and len(devices) == 1 and devices <= supported and all(p.is_floating_point() for p in params)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98), eps=1e-6,
                    fused: bool | None = None):
    """open_clip_train's AdamW groups. ``fused=None`` uses torch's fused AdamW kernel where it is supported: the
    same update as the per-tensor loop (to rounding), several times faster on CPU (one pass over each tensor)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if no_weight_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_weight_decay(n, p)], "weight_decay": weight_decay},
    ]
    if fused is None:
        fused = fused_adamw_supported(p for _, p in named)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True if fused else None)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """open_clip's ``cosine_lr``: linear warm-up ``base*(step+1)/warmup``, then half a cosine to zero."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
