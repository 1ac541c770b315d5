"""Self-distillation between the global view's dense map and each crop's own encoding (spec section 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def roi_pooled(tokens: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean feature of each box over a dense map.

    ``tokens`` ``[B, gh, gw, D]``; ``boxes`` ``[B, K, 4]`` x1 y1 x2 y2 normalised to the image. Each box is
    scaled to the grid and RoIAligned (aligned=True, adaptive sampling) to a ``gh x gw`` output, which is
    averaged. Returns ``[B*K, D]``.
    """
    B, gh, gw, D = tokens.shape
    K = boxes.shape[1]
    scale = boxes.new_tensor([gw, gh, gw, gh])
    rois = torch.cat([torch.arange(B, device=boxes.device, dtype=boxes.dtype).repeat_interleave(K)[:, None],
                      (boxes.reshape(B * K, 4) * scale)], dim=1)
    fmap = tokens.permute(0, 3, 1, 2)
    pooled = roi_align(fmap.float() if fmap.dtype == torch.bfloat16 and fmap.device.type == "cpu" else fmap,
                       rois.to(fmap.dtype if fmap.dtype != torch.bfloat16 else torch.float32),
                       output_size=(gh, gw), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return pooled.mean(dim=(2, 3))


def cosine_distill_loss(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``1 - cos(student, target)`` (both ``[N, D]``)."""
    return (1 - (F.normalize(student, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)).mean()
