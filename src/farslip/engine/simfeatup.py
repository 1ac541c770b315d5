"""SimFeatUp: SegEarth-OV's learned upsampler of dense CLIP features (optional in its protocol).

The architecture is SegEarth-OV's ``JBUOne`` (simfeatup_dev/upsamplers.py in github.com/likyoo/SegEarth-OV): one
joint-bilateral upsampling step with a learned range kernel, applied four times (each doubling the feature grid,
x16 in all -- a ViT-B/16 window's 14 x 14 tokens become 224 x 224), then a 1 x 1 convolution added at 0.1. Each
step, with the image (the normalised window) average-pooled to the new grid as guidance ``g``:

* range kernel: ``softmax_p(t * <k(g)_p, k(g)>)`` over the ``11 x 11`` neighbours ``p`` of each pixel, ``k`` a small
  1x1-conv projection of ``g``, ``t = exp(range_temp)`` clamped to [1e-4, 1e4];
* spatial kernel: ``exp(-|p|^2 / (2 sigma^2))`` on a [-1, 1] grid of offsets; the product is renormalised to sum
  1 and corrected by ``0.1 x fixup_proj([kernel, g])``;
* the features, bicubically upsampled to the new grid and reflect-padded, are averaged with that per-pixel kernel.

The module's parameter names follow SegEarth-OV's, so its public weights file (``xclip_jbu_one_million_aid.ckpt``,
CLIP ViT-B/16 features, 512 channels; a PyTorch-Lightning checkpoint whose ``state_dict`` keys start with
``upsampler.``) loads as it is, by path (:func:`load_simfeatup`); the weights are not shipped with farslip.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import FarslipError
from ..models.checkpoint_io import load_tensors_only, unreadable

#: Each JBU step doubles the grid; four steps.
STEPS = 4
UPSAMPLING = 2 ** STEPS


class JointBilateralStep(nn.Module):
    """One guided x2 upsampling (SegEarth-OV ``JBULearnedRange``; parameter names kept for its checkpoints)."""

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 5):
        super().__init__()
        self.radius = radius
        self.diameter = 2 * radius + 1
        self.key_dim = key_dim
        taps = self.diameter ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(guidance_dim + taps, taps, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(taps, taps, 1))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def spatial_kernel(self, device) -> torch.Tensor:
        """``[1, taps, 1, 1]`` Gaussian of the offsets on a [-1, 1] grid (row offset major)."""
        offsets = torch.linspace(-1, 1, self.diameter, device=device)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        return torch.exp(-(dy.square() + dx.square()) / (2 * self.sigma_spatial ** 2)).reshape(1, -1, 1, 1)

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """``[B, taps, H, W]``: softmax over each pixel's neighbours of the key similarity."""
        b, _, h, w = guidance.shape
        keys = self.range_proj(guidance)
        neighbours = F.unfold(F.pad(keys, [self.radius] * 4, mode="reflect"), self.diameter)
        neighbours = neighbours.view(b, self.key_dim, self.diameter ** 2, h, w)
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        return F.softmax(temperature * torch.einsum("bcphw,bchw->bphw", neighbours, keys), dim=1)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        h, w = guidance.shape[-2:]
        kernel = self.range_kernel(guidance) * self.spatial_kernel(source.device)
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        kernel = kernel + 0.1 * self.fixup_proj(torch.cat([kernel, guidance], dim=1))
        big = F.interpolate(source, size=(h, w), mode="bicubic", align_corners=False)
        return neighbourhood_average(F.pad(big, [self.radius] * 4, mode="reflect"), kernel.to(big.dtype),
                                     self.diameter)


def neighbourhood_average(padded: torch.Tensor, kernel: torch.Tensor, diameter: int) -> torch.Tensor:
    """``out[b, c, y, x] = sum_{i, j} padded[b, c, y + i, x + j] * kernel[b, i * diameter + j, y, x]``.

    FeatUp's ``AdaptiveConv`` (a CUDA extension there), one offset at a time: memory stays at two feature maps
    instead of the ``taps x`` larger unfolded tensor."""
    h, w = kernel.shape[-2:]
    out = torch.zeros(padded.shape[:2] + (h, w), dtype=padded.dtype, device=padded.device)
    for i in range(diameter):
        for j in range(diameter):
            out.addcmul_(padded[:, :, i:i + h, j:j + w], kernel[:, i * diameter + j:i * diameter + j + 1])
    return out


class SimFeatUp(nn.Module):
    """SegEarth-OV's ``JBUOne``: one shared :class:`JointBilateralStep` applied four times, then a 0.1 x 1x1 fix-up.

    ``forward(features [B, C, h, w], image [B, 3, H, W]) -> [B, C, 16 h, 16 w]``."""

    def __init__(self, feat_dim: int = 512):
        super().__init__()
        self.feat_dim = feat_dim
        self.up = JointBilateralStep(3, 32, radius=5)
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, kernel_size=1))

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = features
        for _ in range(STEPS):
            guidance = F.adaptive_avg_pool2d(image, (2 * x.shape[-2], 2 * x.shape[-1]))
            x = self.up(x, guidance.to(x.dtype))
        return self.fixup_proj(x) * 0.1 + x


class SimFeatUpError(FarslipError, ValueError):
    """The upsampler weights file cannot be used (named in the message)."""


#: Where SegEarth-OV's checkpoint keeps the upsampler's tensors.
PREFIX = "upsampler."


def read_simfeatup_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The upsampler's tensors from a SegEarth-OV SimFeatUp checkpoint (or a plain state dict of them)."""
    path = str(path)
    if not os.path.isfile(path):
        raise SimFeatUpError(f"SimFeatUp weights {path!r}: no such file (SegEarth-OV's "
                             "simfeatup_dev/weights/xclip_jbu_one_million_aid.ckpt for CLIP ViT-B/16)")
    try:
        obj = load_tensors_only(path)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file is one clear line
        raise SimFeatUpError(f"SimFeatUp weights {path!r}: {unreadable(Path(path), exc)}") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SimFeatUpError(f"SimFeatUp weights {path!r}: no state dict of tensors in it")
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}


def load_simfeatup(path: str | os.PathLike, feat_dim: int | None = None) -> SimFeatUp:
    """Build :class:`SimFeatUp` and load SegEarth-OV's weights file at ``path`` (safely: tensors only), in eval mode.

    ``feat_dim`` (the CLIP embedding width) is checked against the file's when given."""
    state = read_simfeatup_state(path)
    key = "fixup_proj.1.weight"
    if key not in state:
        raise SimFeatUpError(f"SimFeatUp weights {path!r}: no {PREFIX}{key} -- not a SimFeatUp (JBUOne) checkpoint "
                             f"(keys: {', '.join(sorted(state)[:6])}, ...)")
    dim = state[key].shape[0]
    if feat_dim is not None and dim != feat_dim:
        raise SimFeatUpError(f"SimFeatUp weights {path!r} upsample {dim}-channel features but the model's "
                             f"embeddings have {feat_dim} (SegEarth-OV's public file is for CLIP ViT-B/16)")
    module = SimFeatUp(dim)
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        raise SimFeatUpError(f"SimFeatUp weights {path!r} do not fit the JBUOne architecture: missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}, mis-shaped {misshaped[:6]}")
    module.load_state_dict(state, strict=True)
    return module.eval()
