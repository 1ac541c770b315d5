"""Tiles of a large raster that together give exactly the single-pass OVSS result.

The evaluation's protocol slides windows over the whole (optionally rescaled) image, averages the overlapping
window logits and resamples them bilinearly to the original size. A 20,000 px raster cannot be held whole, so
``farslip segment`` works tile by tile -- but instead of giving each tile a margin of context and its own window
grid (which changes the result near tile edges and encodes each margin again), every tile takes the windows *of
the whole raster's grid* that touch it. Each output pixel then averages the same windows as in one pass, and only
the windows straddling a tile edge are encoded twice (about 1.1x per axis instead of about 1.5x with margins).

Everything here is index arithmetic per axis (the window grid is separable); ``segment`` does the IO.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.windows import window_spans


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis.

    ``out``: its span of output (original-resolution) pixels; ``region``: the span of the rescaled grid that is
    read and encoded (the union of the windows in ``windows``, which are relative to ``region``); ``index0`` /
    ``index1`` / ``weight1``: for a rescaled raster, the two region rows each output row interpolates between and
    the weight of the second (``None`` when the raster is not rescaled: the output is ``region`` cropped).
    """

    out: tuple[int, int]
    region: tuple[int, int]
    windows: tuple[tuple[int, int], ...]
    index0: torch.Tensor | None = None
    index1: torch.Tensor | None = None
    weight1: torch.Tensor | None = None

    def take(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """The output rows (along ``dim``) of region logits ``x``."""
        if self.index0 is None:
            start = self.out[0] - self.region[0]
            return x.narrow(dim, start, self.out[1] - self.out[0])
        shape = [1] * x.dim()
        shape[dim] = -1
        w1 = self.weight1.to(x.device, x.dtype).view(shape)
        a = x.index_select(dim, self.index0.to(x.device))
        b = x.index_select(dim, self.index1.to(x.device))
        return a + (b - a) * w1


def linear_source(n_out: int, n_in: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For output indices ``start..stop-1`` of a bilinear resize ``n_in -> n_out`` (``align_corners=False``, as
    ``F.interpolate``): the two input indices each one reads and the weight of the second."""
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, (src - i0).float()


def axis_tiles(n_out: int, n_in: int, crop: int, stride: int, step: int) -> list[AxisTile]:
    """Tiles of ``step`` output pixels along an axis of ``n_out`` original pixels, rescaled to ``n_in`` for the
    windows (``n_in == n_out``: no rescaling)."""
    spans = window_spans(n_in, crop, stride)
    bounds = list(range(0, n_out, step)) + [n_out]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < step // 2:
        del bounds[-2]  # a thin last tile would encode almost as many windows as a full one: join it to the previous
    tiles = []
    for o0, o1 in zip(bounds[:-1], bounds[1:]):
        if n_in == n_out:
            need = (o0, o1)
            i0 = i1 = w1 = None
        else:
            i0, i1, w1 = linear_source(n_out, n_in, o0, o1)
            need = (int(i0.min()), int(i1.max()) + 1)
        windows = [(a, b) for a, b in spans if a < need[1] and b > need[0]]
        r0, r1 = min(a for a, _ in windows), max(b for _, b in windows)
        rel = tuple((a - r0, b - r0) for a, b in windows)
        if i0 is not None:
            i0, i1 = i0 - r0, i1 - r0
        tiles.append(AxisTile((o0, o1), (r0, r1), rel, i0, i1, w1))
    return tiles


def tile_step(block: int, stride: int, scale: float) -> int:
    """Output pixels per tile side: ``block`` rounded to whole window strides of the rescaled grid, so that tiles
    and windows line up and few windows straddle two tiles."""
    strides = max(1, round(block * scale / stride))
    return max(1, round(strides * stride / scale))


def tile_boxes(rows: AxisTile, cols: AxisTile) -> list[tuple[int, int, int, int]]:
    """The tile's windows ``(y1, y2, x1, x2)`` relative to its region, row by row like ``window_boxes``."""
    return [(y1, y2, x1, x2) for y1, y2 in rows.windows for x1, x2 in cols.windows]
