"""Cloud-Optimized GeoTIFFs written block by block: every raster farslip writes goes through here.

GDAL's COG driver only copies a finished dataset (it writes the overviews and the image data after all the
headers, smallest overview first), so a raster is written in two steps: blocks go into a tiled staging GeoTIFF
beside the output, which GDAL then copies into the COG (overviews computed from the staging file, block by
block: memory is bounded by GDAL's block cache, not by the raster's size). The COG itself is written under a
temporary name and renamed when complete, so no partial file ever looks finished.

``validate_cog`` checks a file's layout the way GDAL's ``validate_cloud_optimized_geotiff.py`` does (tiling,
overviews, IFDs before the data, overview data before the full-resolution data), through rasterio's access to
GDAL's TIFF metadata domain.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning

from ..core.files import atomic_path

#: Internal tile size of every COG (GDAL's default for the COG driver, what web viewers fetch).
BLOCK = 512


def georeference(src) -> dict:
    """The CRS and transform of ``src`` as profile entries (none for a plain picture, so none is invented)."""
    out = {}
    if src.crs is not None:
        out["crs"] = src.crs
    if not src.transform.is_identity:
        out["transform"] = src.transform
    return out


@contextmanager
def cog_writer(path: str | Path, like, *, count: int = 1, dtype: str = "uint8", nodata: float | None = None,
               resampling: str = "average", tags: dict | None = None, descriptions: Sequence[str] = (),
               colormap: dict | None = None) -> Iterator["rasterio.io.DatasetWriter"]:
    """A dataset with ``like``'s size and georeference to write window by window; on leaving the block the file
    at ``path`` is a COG (``resampling``: how its overviews are made -- ``nearest`` for class indexes,
    ``average`` for scores). On an error nothing is left at ``path`` (an older file there stays untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f".{path.name}.{os.getpid()}.stage.tif")
    profile = {"driver": "GTiff", "height": like.height, "width": like.width, "count": count, "dtype": dtype,
               "nodata": nodata, "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
               "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER", **georeference(like)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(stage, "w", **profile) as dst:
                dst.update_tags(SOFTWARE="farslip", **(tags or {}))
                for i, d in enumerate(descriptions, 1):
                    dst.set_band_description(i, d)
                if colormap:
                    dst.write_colormap(1, colormap)
                yield dst
            floating = np.dtype(dtype).kind == "f"
            with atomic_path(path) as partial:
                rasterio.shutil.copy(stage, partial, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=BLOCK,
                                     OVERVIEWS="AUTO", RESAMPLING=resampling.upper(), BIGTIFF="IF_SAFER",
                                     PREDICTOR="YES" if floating else "NO")
    finally:
        stage.unlink(missing_ok=True)


def class_map_writer(path: str | Path, like, class_names: Sequence[str], palette: np.ndarray, nodata: int = 255,
                     source: str | Path | None = None):
    """A uint8 class-index COG: class names in the metadata and the band description, a colour table."""
    return cog_writer(path, like, nodata=nodata, resampling="nearest", tags=_tags(class_names, source),
                      descriptions=["class index; " + ", ".join(f"{i}={n}" for i, n in enumerate(class_names))],
                      colormap={i: tuple(int(c) for c in palette[i]) + (255,) for i in range(len(class_names))})


def score_writer(path: str | Path, like, band_names: Sequence[str], *, kind: str,
                 source: str | Path | None = None, class_names: Sequence[str] | None = None):
    """A float32 COG of scores in [0, 1] (NaN = nodata), one band per name. ``kind`` says what the values are
    (``confidence``, ``probability``, ``similarity``); it is stored as the ``FARSLIP_KIND`` tag."""
    tags = _tags(class_names or band_names, source)
    tags["FARSLIP_KIND"] = kind
    return cog_writer(path, like, count=len(band_names), dtype="float32", nodata=float("nan"), resampling="average",
                      tags=tags, descriptions=list(band_names))


def _tags(class_names: Sequence[str], source: str | Path | None) -> dict:
    tags = {"CLASS_NAMES": json.dumps(list(class_names))}
    if source is not None:
        tags["FARSLIP_SOURCE"] = str(Path(source).resolve())
    return tags


def validate_cog(path: str | Path) -> list[str]:
    """What keeps ``path`` from being a Cloud-Optimized GeoTIFF (empty list: it is one), checked as GDAL's
    ``validate_cloud_optimized_geotiff.py`` does."""
    errors = []
    with rasterio.open(path) as src:
        if src.driver != "GTiff":
            return [f"driver is {src.driver}, not GTiff"]
        if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            errors.append("no COG layout header (GDAL's LAYOUT=COG ghost area is missing)")
        big = src.width > BLOCK or src.height > BLOCK
        if big and (src.block_shapes[0][1] == src.width or not src.profile.get("tiled")):
            errors.append("the full-resolution image is not tiled")
        levels = src.overviews(1)
        if big and not levels:
            errors.append("no overviews on an image larger than 512 x 512")
        ifd = [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1))]
        ifd += [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=i)) for i in range(len(levels))]
        if ifd != sorted(ifd):
            errors.append(f"IFDs are not in order full resolution, then overviews largest first: {ifd}")
        data = [_first_block_offset(src, None)] + [_first_block_offset(src, i) for i in range(len(levels))]
        if any(d < max(ifd) for d in data if d):
            errors.append("image data starts before the last IFD (IFDs must all come first)")
        present = [d for d in data if d]
        if present != sorted(present, reverse=True):
            errors.append("overview data must come before the full-resolution data, smallest overview first")
    return errors


def _first_block_offset(src, ovr: int | None) -> int:
    kw = {} if ovr is None else {"ovr": ovr}
    value = src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, **kw)
    return int(value) if value else 0
