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


def open_dataset(path: str | Path) -> "rasterio.DatasetReader":
    """``rasterio.open`` without rasterio's NotGeoreferencedWarning for a picture (PNG, JPEG, or farslip's outputs
    from one): a command says once, in its summary, that an input has no CRS, rather than at every file opened."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def open_raster(path: str | Path, bands: Sequence[int] | None = None,
                percentiles: tuple[float, float] = (2.0, 98.0)) -> RasterInput:
    """Open ``path`` and decide the RGB bands and the 8-bit stretch (percentiles of a decimated read)."""
    path = Path(path)
    if not path.exists():
        raise RasterError(f"{path}: file not found")
    try:
        src = open_dataset(path)
    except RasterioIOError as exc:
        raise RasterError(f"{path}: not a raster image GDAL can read ({exc})") from None
    if src.driver in WHOLE_FILE_FORMATS:
        _check_decodes(src, path)
    try:
        check_georeference(src, path)
    except RasterError:
        src.close()
        raise
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


def crs_name(crs) -> str | None:
    """``EPSG:32632`` (or the CRS's WKT when it has no code); None without a CRS."""
    if crs is None:
        return None
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.to_wkt()


#: Pixels finer than this in a metric CRS (1 mm) are degrees written under a metre label, not imagery.
MIN_METRIC_PIXEL = 1e-3


def check_georeference(src, path: str | Path) -> None:
    """Refuse a raster whose coordinates cannot be where its CRS says they are, before anything is written from
    it: a geographic CRS (degrees) with corners beyond longitude -180..360 or latitude -90..90 (metre coordinates
    under an EPSG:4326 label), a projected CRS whose corners map to no longitude and latitude, or a metric CRS with
    pixels under a millimetre (degrees under a metre label). A raster without a CRS or transform is not checked:
    it is a picture, mapped in pixels."""
    crs, t = src.crs, src.transform
    if crs is None or t.is_identity:
        return
    left, bottom, right, top = src.bounds
    corners = f"x {left:.10g} .. {right:.10g}, y {bottom:.10g} .. {top:.10g}"
    fix = f"set the CRS its coordinates are in (gdal_edit.py -a_srs EPSG:<code> {path}) and run again"
    if crs.is_geographic:
        slack = 1e-6 + max(abs(t.a), abs(t.e))  # a global grid's edge pixel may overhang by a pixel
        if not (-180 - slack <= min(left, right) and max(left, right) <= 360 + slack
                and -90 - slack <= min(bottom, top) and max(bottom, top) <= 90 + slack):
            raise RasterError(f"{path}: its CRS {crs.to_string()} is in degrees but its corners are at {corners}, "
                              f"beyond longitude -180 .. 360 / latitude -90 .. 90; {fix}")
        return
    from rasterio.warp import transform

    try:
        lon, lat = transform(crs, "EPSG:4326", [left, right, left, right], [bottom, bottom, top, top])
        inside = bool(np.isfinite(lon + lat).all()) and all(abs(v) <= 90 for v in lat)
    except Exception:  # noqa: BLE001 - GDAL's own CPLE_* errors: "Point outside of projection domain"
        inside = False
    if not inside:
        raise RasterError(f"{path}: its corners {corners} are not coordinates of its CRS {crs.to_string()} (they "
                          f"map to no longitude and latitude); {fix}")
    units = (crs.linear_units or "").lower()
    pixel = max(abs(t.a), abs(t.b), abs(t.d), abs(t.e))
    if units in ("metre", "meter", "m") and pixel < MIN_METRIC_PIXEL:
        raise RasterError(f"{path}: its pixels are {pixel:.3g} m in its metric CRS {crs.to_string()} (corners "
                          f"{corners}): these look like degrees under a metre label; {fix}")


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
