"""A whole raster through the dense engine, tile by tile: what ``segment`` and ``locate`` share.

``SceneTiles`` lays the tiles of ``tiling.py`` over a raster (each tile encodes the windows of the whole raster's
grid that touch it, so the result equals one pass over the whole raster); ``tile_logits`` gives one tile's
window-averaged cosine logits at output resolution. Windows that hold no valid pixel (nodata, mask or alpha) are
not encoded, and a tile with no valid pixel encodes nothing: on a scene with a wide nodata collar that is most of
the work saved, and no valid pixel's value changes (every window that covers a valid pixel is kept).

A rescaled raster (``scale`` != 1) is resampled the OVSS protocols' way by default (``resampling="opencv-linear"``):
OpenCV's bilinear resize of the whole raster, as mmcv's ``imresize`` in both official evaluations and
:func:`~farslip.engine.images.prepare_image`, evaluated at each tile's pixels from the source window they read plus
one pixel of margin -- bit for bit the resize of the whole image, so the windows see what ``farslip eval`` would
show them. ``"gdal-bilinear"`` lets GDAL resample the tile's (fractional) window as it reads it instead: other
pixels (GDAL's bilinear differs from OpenCV's by up to tens of grey levels), overviews used where they exist.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rasterio.enums import Resampling

from ..core.errors import UsageError
from ..engine import normaliser, sliding_window_logits
from ..engine.images import resize_bilinear_part
from .raster import RasterInput, Window, read_rgb, read_valid
from .tiling import AxisTile, axis_tiles, tile_boxes, tile_step

#: How a rescaled raster is resampled: the protocols' OpenCV bilinear (default), or GDAL's in the read.
RESAMPLINGS = ("opencv-linear", "gdal-bilinear")


def check_resampling(resampling: str) -> None:
    if resampling not in RESAMPLINGS:
        raise UsageError(f"--resampling {resampling!r}: choose one of {', '.join(RESAMPLINGS)}")


@dataclass
class Tile:
    rows: AxisTile
    cols: AxisTile

    @property
    def window(self) -> Window:
        """The tile's output pixels in the raster."""
        (y0, y1), (x0, x1) = self.rows.out, self.cols.out
        return Window(x0, y0, x1 - x0, y1 - y0)


class SceneTiles:
    """The tiles of a raster for windows of ``window`` px every ``stride`` px on the grid rescaled by ``scale``
    (resampled as ``resampling`` says: one of :data:`RESAMPLINGS`), about ``block`` output pixels a side."""

    def __init__(self, r: RasterInput, window: int, stride: int, scale: float = 1.0, block: int = 1024,
                 resampling: str = "opencv-linear"):
        self.r, self.window, self.stride, self.scale, self.resampling = r, window, stride, scale, resampling
        H, W = r.height, r.width
        self.scaled = (max(1, round(H * scale)), max(1, round(W * scale)))  # the grid the windows slide on
        step = tile_step(block, stride, scale)
        self.row_tiles = axis_tiles(H, self.scaled[0], window, stride, step)
        self.col_tiles = axis_tiles(W, self.scaled[1], window, stride, step)

    def __len__(self) -> int:
        return len(self.row_tiles) * len(self.col_tiles)

    def __iter__(self):
        for rows in self.row_tiles:
            for cols in self.col_tiles:
                yield Tile(rows, cols)

    def region(self, tile: Tile) -> Window:
        """The tile's region of the rescaled grid, in input pixels (fractional when rescaled: GDAL honours it)."""
        (Hs, Ws), (H, W) = self.scaled, (self.r.height, self.r.width)
        (ry0, ry1), (rx0, rx1) = tile.rows.region, tile.cols.region
        return Window(rx0 * W / Ws, ry0 * H / Hs, (rx1 - rx0) * W / Ws, (ry1 - ry0) * H / Hs)

    @property
    def rescaled(self) -> bool:
        return self.scaled != (self.r.height, self.r.width)

    def tags(self) -> dict[str, str]:
        """What the rasters written from these tiles record of the resampling (GeoTIFF metadata)."""
        return {"FARSLIP_SCALE": f"{self.scale:g}", "FARSLIP_RESAMPLING": self.resampling if self.rescaled else "none"}

    def pixels(self, tile: Tile) -> np.ndarray:
        """8-bit RGB ``[3, h, w]`` of the tile's region of the rescaled grid."""
        if not self.rescaled or self.resampling == "gdal-bilinear":
            return read_rgb(self.r, self.region(tile), self.region_shape(tile))

        def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return read_rgb(self.r, Window(x0, y0, x1 - x0, y1 - y0)).transpose(1, 2, 0)

        hwc = resize_bilinear_part(read, (self.r.height, self.r.width), self.scaled, tile.rows.region,
                                   tile.cols.region)
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))

    def region_shape(self, tile: Tile) -> tuple[int, int]:
        (ry0, ry1), (rx0, rx1) = tile.rows.region, tile.cols.region
        return ry1 - ry0, rx1 - rx0

    def encoded_boxes(self, tile: Tile) -> list[tuple[int, int, int, int]]:
        """The tile's windows that hold a valid pixel (all of them when the raster declares no nodata)."""
        boxes = tile_boxes(tile.rows, tile.cols)
        if self.r.all_valid:
            return boxes
        # a region pixel counts as valid when any input pixel under it is (average of the masks > 0), grown by one pixel so that the two
        # region pixels a rescaled output pixel interpolates between are both computed
        m = self.r.src.read_masks(self.r.bands, window=self.region(tile), out_shape=(3,) + self.region_shape(tile),
                                  resampling=Resampling.average).max(axis=0) > 0
        grown = m.copy()
        grown[1:] |= m[:-1]
        grown[:-1] |= m[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        table = np.pad(grown.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table: any-valid per window
        return [(y1, y2, x1, x2) for y1, y2, x1, x2 in boxes
                if table[y2, x2] - table[y1, x2] - table[y2, x1] + table[y1, x1] > 0]

    def valid(self, tile: Tile) -> np.ndarray | None:
        """``[h, w]`` validity of the tile's output pixels (None: all valid)."""
        return read_valid(self.r, tile.window)


def bounded_gdal_cache(megabytes: int):
    """GDAL's block cache capped at ``megabytes`` while we read and write (unless GDAL_CACHEMAX is set by the
    user). By default GDAL may cache up to 5% of the machine's RAM of raster blocks, which on a 20,000 x 20,000
    scene is most of the process's peak memory; the blockwise loops read and write each block once, so a small
    cache costs nothing."""
    import os

    import rasterio

    if "GDAL_CACHEMAX" in os.environ or not megabytes:
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=int(megabytes))


def tile_logits(scene: SceneTiles, tile: Tile, model=None, text: torch.Tensor | None = None, *, amp=None,
                window_batch_size: int | None = None, normalise=None, dense=None, **window) -> torch.Tensor | None:
    """``[Q, h, w]`` window-averaged cosine logits of the tile's output pixels against ``text`` (NaN where no
    encoded window covers a pixel, i.e. nodata), or None when the tile has no valid pixel. ``normalise``: uint8
    ``[3, h, w]`` -> the model's input (default: the model's own mean and std). ``window``: the other options of
    :func:`~farslip.engine.sliding_window_logits` (attn, cls_lambda, a protocol's settings). ``dense``: instead of
    the CLIP's windows, ``dense(pixels, boxes)`` turns the region's uint8 ``[3, h, w]`` pixels and its windows into
    ``[Q, h, w]`` maps (the SAM 3 protocols)."""
    boxes = scene.encoded_boxes(tile)
    if not boxes:
        return None
    pixels = torch.from_numpy(scene.pixels(tile))
    if dense is not None:
        logits = dense(pixels, boxes)
    else:
        x = (normalise or normaliser(model))(pixels)
        logits = sliding_window_logits(model, [x.to(next(model.parameters()).device)], text, crop=scene.window,
                                       stride=scene.stride, amp=amp, window_batch_size=window_batch_size,
                                       boxes=[boxes], **window)[0]
    return tile.cols.take(tile.rows.take(logits, 1), 2)
