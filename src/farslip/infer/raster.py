"""Windowed raster IO: any size, any band count or bit depth in (the outputs are written by ``cog.py``).

Everything is read and written block by block through rasterio, so a 20,000 x 20,000 scene is never held in
memory whole. PNG and JPEG go through the same path (GDAL reads them), without a georeference.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import FarslipError

try:  # rasterio is a hard dependency; import lazily-friendly for clear errors
    import rasterio
    from rasterio.enums import MaskFlags, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from rasterio.windows import Window
except ImportError as exc:  # pragma: no cover
    raise ImportError("farslip's inference needs rasterio (pip install rasterio)") from exc


class RasterError(FarslipError, ValueError):
    """An input that is missing, not a raster, or asks for bands it does not have."""


@dataclass
class RasterInput:
    """An open raster with the choices that turn its pixels into 8-bit RGB."""

    path: Path
    src: "rasterio.DatasetReader"
    bands: list[int]                         # 1-based band indexes giving R, G, B
    stretch: list[tuple[float, float]] | None  # per output band (low, high) -> 0..255; None for 8-bit input
    all_valid: bool = False                  # no nodata, mask or alpha declared on the chosen bands

    @property
    def height(self) -> int:
        return self.src.height

    @property
    def width(self) -> int:
        return self.src.width

    def close(self) -> None:
        self.src.close()


def open_raster(path: str | Path, bands: Sequence[int] | None = None,
                percentiles: tuple[float, float] = (2.0, 98.0)) -> RasterInput:
    """Open ``path`` and decide the RGB bands and the 8-bit stretch (percentiles of a decimated read)."""
    path = Path(path)
    if not path.exists():
        raise RasterError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterError(f"{path}: not a raster image GDAL can read ({exc})") from None
    if src.driver in WHOLE_FILE_FORMATS:
        _check_decodes(src, path)
    if bands:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad or len(bands) not in (1, 3):
            src.close()
            raise RasterError(f"{path}: has {src.count} band(s); --bands asks for {bad}" if bad else
                              f"{path}: --bands takes three bands (R,G,B) or one (grey), got {list(bands)}")
        chosen = list(bands) if len(bands) == 3 else [bands[0]] * 3
    else:
        chosen = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
    stretch = None if src.dtypes[0] == "uint8" else _percentile_stretch(src, chosen, percentiles)
    all_valid = all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in chosen)
    return RasterInput(path, src, chosen, stretch, all_valid)


# Formats GDAL decodes leniently: a truncated PNG or JPEG reads as an image whose missing rows are filled in, with
# no error. They are decoded once, strictly, by Pillow (up to this many pixels) so a cut-off download is refused.
WHOLE_FILE_FORMATS = {"PNG", "JPEG", "GIF", "BMP", "WEBP"}
STRICT_DECODE_MAX_PIXELS = 64_000_000


def _check_decodes(src, path: Path) -> None:
    if src.width * src.height > STRICT_DECODE_MAX_PIXELS:
        return
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        src.close()
        raise RasterError(f"{path}: truncated or corrupt {src.driver} image ({exc})") from None


def _percentile_stretch(src, bands, percentiles, max_side: int = 1024):
    """Low/high percentiles per band from a decimated read (bounded memory), ignoring nodata."""
    f = max(1, max(src.height, src.width) // max_side)
    shape = (max(1, src.height // f), max(1, src.width // f))
    out = []
    for b in bands:
        arr = src.read(b, out_shape=shape, resampling=Resampling.nearest, masked=True)
        vals = arr.compressed() if np.ma.isMaskedArray(arr) else arr.ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            out.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(vals, percentiles)
        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return out


def read_rgb(r: RasterInput, window: Window, out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """8-bit RGB ``[3, h, w]`` for a window (fractional windows and resampling to ``out_shape`` allowed)."""
    shape = out_shape or (int(window.height), int(window.width))
    data = r.src.read(r.bands, window=window, out_shape=(3,) + tuple(shape), resampling=Resampling.bilinear)
    if r.stretch is None:
        return data.astype(np.uint8)
    rgb = np.empty(data.shape, np.uint8)
    for i, (lo, hi) in enumerate(r.stretch):
        band = np.nan_to_num(data[i].astype(np.float32), nan=lo)
        rgb[i] = np.clip((band - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)
    return rgb


def read_valid(r: RasterInput, window: Window) -> np.ndarray | None:
    """``[h, w]`` True where every chosen band has data, at the raster's own resolution; None when the raster
    declares no nodata, mask or alpha (all valid: nothing to read)."""
    if r.all_valid:
        return None
    return (r.src.read_masks(r.bands, window=window) > 0).all(axis=0)


def read_thumbnail(r: RasterInput, max_side: int) -> np.ndarray:
    """The whole raster as 8-bit RGB ``[3, h, w]`` with its longer side at most ``max_side`` (decimated read)."""
    f = max(r.height, r.width) / max_side
    shape = (max(1, round(r.height / f)), max(1, round(r.width / f))) if f > 1 else (r.height, r.width)
    return read_rgb(r, Window(0, 0, r.width, r.height), shape)
