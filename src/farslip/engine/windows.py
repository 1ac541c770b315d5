"""Sliding windows over an image and their dense text logits (SegEarth-OV's / RS-OVSS's window arithmetic), with
the two protocol-specific steps: RS-OVSS's resize of a window to the model's input, SegEarth-OV's SimFeatUp."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import dense_features
from ..models.towers import patch_size
from ..models.precision import Amp, autocast_for, model_device, model_dtype
from .simfeatup import UPSAMPLING


def window_boxes(h: int, w: int, crop: int | tuple[int, int] = 224,
                 stride: int | tuple[int, int] = 112) -> list[tuple[int, int, int, int]]:
    """SegEarth-OV's (mmseg's) sliding windows ``(y1, y2, x1, x2)`` over an ``h x w`` image, row by row.

    ``max(h - crop + stride - 1, 0) // stride + 1`` rows of windows (same for columns); the last one is shifted
    back to end at the border; an image smaller than a window gives one window of the image's size. The grid is
    the product of one span list per axis (:func:`window_spans`).
    """
    h_crop, w_crop = (crop, crop) if isinstance(crop, int) else crop
    h_stride, w_stride = (stride, stride) if isinstance(stride, int) else stride
    return [(y1, y2, x1, x2) for y1, y2 in window_spans(h, h_crop, h_stride)
            for x1, x2 in window_spans(w, w_crop, w_stride)]


def window_spans(n: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each sliding window along one axis of length ``n`` (see :func:`window_boxes`)."""
    spans = []
    for i in range(max(n - crop + stride - 1, 0) // stride + 1):
        end = min(i * stride + crop, n)
        spans.append((max(end - crop, 0), end))
    return spans


def pad_to_patch(h: int, w: int, patch: int) -> tuple[int, int, int, int]:
    """SegEarth-OV's ``compute_padsize``: centred ``(left, right, top, bottom)`` padding to a patch multiple."""
    l = r = t = b = 0
    if w % patch:
        lr = patch - w % patch
        l, r = lr // 2, lr - lr // 2
    if h % patch:
        tb = patch - h % patch
        t, b = tb // 2, tb - tb // 2
    return l, r, t, b


@torch.no_grad()
def window_logits(model: nn.Module, windows: torch.Tensor, query_features: torch.Tensor, *,
                  attn: str = "segearth", cls_lambda: float = -0.3, cls_from: str = "surgery",
                  amp: Amp = None, model_size: int | None = None, upsampler: nn.Module | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Cosine logits ``[B, Q, h, w]`` of a batch of (padded) windows ``[B, 3, h, w]``, at window resolution.

    ``cosine(token, name) + cls_lambda * cosine(cls, name)`` per patch, upsampled bilinearly from the patch grid.
    ``cls_from="surgery"`` takes the CLS row of the modified last block (both official codes); ``"ordinary"`` the
    usual global embedding. ``model_size``: windows of another size are resized (bilinear) to ``model_size``
    squared first and their logits come back from its grid (RS-OVSS ``forward_feature``). ``upsampler``
    (SimFeatUp) upsamples the dense features x16 before the cosine, guided by the window (SegEarth-OV).
    ``dtype``: of the cosines and what follows (float16 mirrors the official half models).
    """
    size = tuple(windows.shape[-2:])
    if model_size is not None and size != (model_size, model_size):
        windows = F.interpolate(windows, size=(model_size, model_size), mode="bilinear", align_corners=False)
    with autocast_for(model, amp):
        tokens, cls = dense_features(model, windows.to(model_dtype(model)), attn, with_cls=cls_lambda != 0,
                                     cls_from=cls_from if cls_lambda != 0 else "ordinary")
    if upsampler is not None:
        tokens = _upsample_features(upsampler, tokens, windows, dtype)
    q = query_features.to(dtype)
    tokens = tokens.to(dtype)
    logits = (tokens / tokens.norm(dim=-1, keepdim=True)) @ q.t()  # [B, gh, gw, Q]
    if cls_lambda != 0:
        cls = cls.to(dtype)
        logits = logits + cls_lambda * ((cls / cls.norm(dim=-1, keepdim=True)) @ q.t())[:, None, None, :]
    logits = logits.permute(0, 3, 1, 2)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _upsample_features(upsampler: nn.Module, tokens: torch.Tensor, windows: torch.Tensor,
                       dtype: torch.dtype) -> torch.Tensor:
    """SimFeatUp on ``[B, gh, gw, D]`` tokens guided by the windows -> ``[B, 16 gh, 16 gw, D]``; in float16 on
    CUDA under autocast as SegEarth-OV runs it, else in the upsampler's own precision."""
    feats = tokens.permute(0, 3, 1, 2)
    if feats.shape[-2] * UPSAMPLING != windows.shape[-2] or feats.shape[-1] * UPSAMPLING != windows.shape[-1]:
        raise ValueError(f"SimFeatUp upsamples x{UPSAMPLING}: it needs a patch size of {UPSAMPLING} "
                         f"(windows {tuple(windows.shape[-2:])}, token grid {tuple(feats.shape[-2:])})")
    up_dtype = next(upsampler.parameters()).dtype
    if windows.device.type == "cuda" and dtype == torch.float16:
        with torch.autocast("cuda", dtype=torch.float16):
            out = upsampler(feats.to(up_dtype), windows.to(up_dtype))
    else:
        out = upsampler(feats.to(up_dtype), windows.to(up_dtype))
    return out.to(dtype).permute(0, 2, 3, 1)


#: Encoder rows (windows x tokens) per call that CPU kernels handle best: a ViT-B/16 window is 197 rows, so about
#: five windows a call; bigger batches spill the caches (measured in benchmarks/, docs/performance.md).
CPU_ROWS_PER_CALL = 1024


#: Windows per encoder call on accelerators (where batching is what fills the device).
DEVICE_WINDOW_BATCH = 64


def default_window_batch(model: nn.Module, crop: int = 224) -> int:
    """Windows per encoder call: 64 on an accelerator; on the CPU about ``CPU_ROWS_PER_CALL`` token rows."""
    if model_device(model).type != "cpu":
        return DEVICE_WINDOW_BATCH
    tokens = (crop // patch_size(model)) ** 2 + 1
    return max(1, CPU_ROWS_PER_CALL // tokens)


@torch.no_grad()
def sliding_window_logits(model: nn.Module, images: Sequence[torch.Tensor], query_features: torch.Tensor, *,
                          crop: int = 224, stride: int = 112, attn: str = "segearth", cls_lambda: float = -0.3,
                          cls_from: str = "surgery", window_batch_size: int | None = None,
                          amp: Amp = None, boxes: Sequence[Sequence[tuple[int, int, int, int]]] | None = None,
                          model_size: int | None = None, upsampler: nn.Module | None = None,
                          dtype: torch.dtype = torch.float32,
                          on_batch: Callable[[float], None] | None = None) -> list[torch.Tensor]:
    """Window-averaged cosine logits ``[Q, H, W]`` for each image ``[3, H, W]`` (already resized/normalised).

    All windows of all ``images`` are grouped by shape and pushed through the encoder ``window_batch_size`` at a
    time (default :func:`default_window_batch`); results equal running SegEarth-OV's window loop one window at a
    time. ``boxes`` (one list per image) replaces the default grid ``window_boxes(H, W, crop, stride)``: tiled
    inference passes the windows of the whole raster that fall in a tile; every pixel must be covered.
    ``model_size``, ``upsampler``, ``dtype``: see :func:`window_logits` (``dtype`` is also that of the images,
    window sums and counts, as the official half models run them). ``on_batch`` is told the share of all windows
    each batch encoded (a progress bar inside a large tile).
    """
    device = model_device(model)
    window_batch_size = window_batch_size or default_window_batch(model, crop)
    patch = patch_size(model)
    Q = query_features.shape[0]
    jobs: dict[tuple[int, int], list] = {}
    sums, counts = [], []
    for n, img in enumerate(images):
        img = img.to(device, dtype)
        H, W = img.shape[-2:]
        sums.append(torch.zeros(Q, H, W, device=device, dtype=dtype))
        counts.append(torch.zeros(1, H, W, device=device, dtype=dtype))
        for (y1, y2, x1, x2) in (boxes[n] if boxes is not None else window_boxes(H, W, crop, stride)):
            pad = pad_to_patch(y2 - y1, x2 - x1, patch)
            shape = (y2 - y1 + pad[2] + pad[3], x2 - x1 + pad[0] + pad[1])
            jobs.setdefault(shape, []).append((n, img, (y1, y2, x1, x2), pad))
    for shape, items in jobs.items():
        for start in range(0, len(items), window_batch_size):
            chunk = items[start:start + window_batch_size]
            crops = []
            for _, img, (y1, y2, x1, x2), pad in chunk:
                c = img[:, y1:y2, x1:x2]
                crops.append(F.pad(c, pad) if any(pad) else c)
            logits = window_logits(model, torch.stack(crops), query_features, attn=attn, cls_lambda=cls_lambda,
                                   cls_from=cls_from, amp=amp, model_size=model_size, upsampler=upsampler,
                                   dtype=dtype)
            for (n, _, (y1, y2, x1, x2), (l, r, t, b)), lg in zip(chunk, logits):
                sums[n][:, y1:y2, x1:x2] += lg[:, t:t + (y2 - y1), l:l + (x2 - x1)]
                counts[n][:, y1:y2, x1:x2] += 1
            if on_batch is not None:
                on_batch(len(chunk) / sum(len(v) for v in jobs.values()))
    return [s / c for s, c in zip(sums, counts)]

