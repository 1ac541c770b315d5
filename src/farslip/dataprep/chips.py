"""Cutting large scenes into chips, and the polygon geometry that goes with it.

DOTA and FAIR1M scenes reach 20,000 px; FarSLIP trains on images of a few hundred pixels. A scene is cut into
``size`` x ``size`` windows overlapping by at least ``overlap`` pixels; windows are spread evenly so the last one
ends at the border (no padding, no sliver chips). An object is clipped to each window it touches (polygon
clipping, so an oriented object's clipped box stays tight) and kept in that chip when the visible part of its
area is at least ``min_visibility``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

Point = tuple[float, float]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


def window_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``size`` covering ``[0, length)`` with at least ``overlap`` px overlap."""
    if size <= 0:
        raise ValueError(f"chip size must be positive, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, chip size), got {overlap} for size {size}")
    if length <= size:
        return [0]
    stride = size - overlap
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def chip_boxes(width: int, height: int, size: int = 800, overlap: int = 200) -> list[Box]:
    """Boxes (x0, y0, x1, y1) covering a ``width`` x ``height`` image, row by row. ``size <= 0`` means one
    box for the whole image. A side shorter than ``size`` gives boxes as long as that side."""
    if size <= 0:
        return [(0, 0, width, height)]
    xs = window_starts(width, size, overlap)
    ys = window_starts(height, size, overlap)
    return [(x, y, min(x + size, width), min(y + size, height)) for y in ys for x in xs]


# ------------------------------------------------------------------------------------------------ geometry

def polygon_area(poly: list[Point]) -> float:
    """Absolute area (shoelace)."""
    n = len(poly)
    if n < 3:
        return 0.0
    s = 0.0
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        s += x1 * y2 - x2 * y1
    return abs(s) / 2.0


def convex_hull(points: list[Point]) -> list[Point]:
    """Convex hull (counter-clockwise, Andrew's monotone chain). Annotated quadrilaterals are sometimes listed
    in a self-intersecting order; their hull is the shape the annotator meant."""
    pts = sorted(set((float(x), float(y)) for x, y in points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[Point] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[Point] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def clip_polygon(poly: list[Point], box: tuple[float, float, float, float]) -> list[Point]:
    """Sutherland-Hodgman clipping of a convex or simple polygon to an axis-aligned rectangle."""
    x0, y0, x1, y1 = box
    out = list(poly)
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not out:
            break
        src, out = out, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cur_in = cur[axis] >= bound if keep_greater else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_greater else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                other = 1 - axis
                pt = [0.0, 0.0]
                pt[axis] = bound
                pt[other] = prev[other] + t * (cur[other] - prev[other])
                out.append((pt[0], pt[1]))
            if cur_in:
                out.append(cur)
    return out


def integer_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Smallest integer box holding (x1, y1, x2, y2), clipped to the image (tolerant to float noise)."""
    eps = 1e-6
    return (max(0, min(width, math.floor(x1 + eps))), max(0, min(height, math.floor(y1 + eps))),
            max(0, min(width, math.ceil(x2 - eps))), max(0, min(height, math.ceil(y2 - eps))))


@dataclass
class ChipObject:
    category: str  # plain name
    raw_category: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in chip pixels
    difficult: bool
    visibility: float


def objects_in_box(objects: list[tuple[str, str, list[Point], bool]], chip: Box,
                   min_visibility: float = 0.7, min_size: float = 2.0) -> tuple[list[ChipObject], dict]:
    """Clip objects (plain name, raw name, convex polygon, difficult) to the ``chip`` box.

    Returns the kept objects, in chip coordinates, and counts: ``cut`` (touching the chip but less than
    ``min_visibility`` of the area inside) and ``too_small`` (visible part thinner than ``min_size`` px).
    """
    x0, y0, x1, y1 = chip
    w, h = x1 - x0, y1 - y0
    kept: list[ChipObject] = []
    counts = {"cut": 0, "too_small": 0}
    for name, raw, poly, difficult in objects:
        bx1, by1, bx2, by2 = _bounds(poly)
        if bx2 <= x0 or by2 <= y0 or bx1 >= x1 or by1 >= y1:
            continue  # not in this chip at all
        area = polygon_area(poly)
        inside = clip_polygon(poly, chip)
        vis = polygon_area(inside) / area if area > 0 else 0.0
        if vis <= 0:
            continue  # touches the chip only along an edge
        if vis + 1e-9 < min_visibility:
            counts["cut"] += 1
            continue
        cx1, cy1, cx2, cy2 = _bounds(inside)
        box = integer_box(cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0, w, h)
        if box[2] - box[0] < min_size or box[3] - box[1] < min_size:
            counts["too_small"] += 1
            continue
        kept.append(ChipObject(name, raw, box, difficult, min(1.0, vis)))
    return kept, counts


def _bounds(poly: list[Point]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


# ------------------------------------------------------------------------------------------------ image IO

def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    Image.MAX_IMAGE_PIXELS = None  # DOTA scenes are up to 20,000 x 20,000: not a decompression bomb
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 -- PIL raises many types; rasterio may still read a GeoTIFF
        if Path(path).suffix.lower() in (".tif", ".tiff"):
            import rasterio

            with rasterio.open(path) as ds:
                return ds.width, ds.height
        raise


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image as 8-bit RGB. 16-bit or float images are stretched (2nd-98th percentile) to 8 bits;
    GeoTIFFs PIL cannot decode are read with rasterio (first three bands)."""
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(path)
        im.load()
    except Exception:  # noqa: BLE001
        if Path(path).suffix.lower() not in (".tif", ".tiff"):
            raise
        import rasterio

        with rasterio.open(path) as ds:
            arr = ds.read(indexes=list(range(1, min(3, ds.count) + 1)))
        arr = np.moveaxis(arr, 0, -1)
        return Image.fromarray(_stretch(arr))
    if im.mode in ("RGB",):
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_stretch(np.asarray(im)))
    return im.convert("RGB")


def _stretch(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    lo, hi = np.percentile(arr, 2), np.percentile(arr, 98)
    out = np.clip((arr - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    elif out.shape[-1] == 2:
        out = np.concatenate([out, out[..., :1]], axis=-1)
    return out
