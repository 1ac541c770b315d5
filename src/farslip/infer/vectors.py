"""Polygons of a class map or of a thresholded heatmap, with bounded memory: GeoPackage in the raster's CRS,
GeoJSON in WGS84 (RFC 7946).

A 20,000 x 20,000 map is polygonised in strips of rows (``rasterio.features.shapes``, 4-connected, as GDAL's
``gdal_polygonize``). A region cut by a strip edge is joined to its other parts: the pixel rows on both sides of
the edge say which pieces touch (same label in the same column), the pieces are merged (union-find) and their
geometries united once the region has no piece on the newest edge. Geometry is built in pixel coordinates, where
the strip edges are exact integers, and mapped to the raster's CRS only when a region is complete -- so the pieces
of a region share their edges exactly and unite without slivers. Each region carries its pixel count and the sum
and maximum of a score raster (the confidence or the heatmap) over its pixels.

Simplification happens piece by piece as each strip is read, with every vertex on the strip's two edge rows kept
in place (``simplify_piece``): the held pieces of a region that spans the whole scene are simplified already, so
memory follows the simplified output (what is written) rather than the pixel staircases of every open boundary,
and the pieces still meet exactly on the strip edges. Each boundary is simplified once, to the tolerance.

Written through pyogrio (GDAL/OGR): GeoPackage or GeoJSON, chosen by the suffix.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
import shapely
import torch
from rasterio.features import rasterize, shapes
from rasterio.windows import Window

from ..core.errors import FarslipError
from ..core.files import atomic_path
from .raster import open_dataset

#: Output formats by suffix (OGR driver names).
DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
#: Pixels per strip: about 4 million (16 MB per int32 array; the per-strip work holds about a dozen), whole rows.
STRIP_PIXELS = 4 * 2 ** 20


#: The attributes of a detected region (``locate``).
REGION_FIELDS = ("query", "score", "max_score", "area", "pixels")


class VectorError(FarslipError, ValueError):
    """An output path whose format is not known, or a raster that cannot be polygonised."""


@dataclass
class Region:
    """One connected region: its label, its pieces (pixel-coordinate polygons) and statistics of its pixels."""

    label: int
    pieces: list = field(default_factory=list)
    pixels: int = 0
    score_sum: float = 0.0
    score_max: float = float("-inf")

    def absorb(self, other: "Region") -> None:
        self.pieces += other.pieces
        self.pixels += other.pixels
        self.score_sum += other.score_sum
        self.score_max = max(self.score_max, other.score_max)

    @property
    def mean_score(self) -> float:
        return self.score_sum / max(self.pixels, 1)


def driver_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in DRIVERS:
        raise VectorError(f"{path}: vector output must end in .gpkg or .geojson")
    return DRIVERS[suffix]


def regions(labels: Callable[[Window], np.ndarray], height: int, width: int,
            scores: Callable[[Window], np.ndarray] | None = None, strip_rows: int | None = None,
            simplify: float = 0.0) -> Iterator[Region]:
    """Every 4-connected region of equal labels (``labels(window)``: int array, negative = no region), strip by
    strip. ``scores(window)``: float array whose sum and maximum each region collects. ``simplify``: tolerance in
    pixels of each piece's simplification (``simplify_piece``; 0: pixel-exact)."""
    rows = strip_rows or max(1, STRIP_PIXELS // max(width, 1))
    parent: dict[int, int] = {}
    open_regions: dict[int, Region] = {}
    prev_ids = prev_labels = None
    next_id = 1

    def root(i: int) -> int:
        while parent.get(i, i) != i:
            parent[i] = parent.get(parent[i], parent[i])
            i = parent[i]
        return i

    for y0 in range(0, height, rows):
        y1 = min(y0 + rows, height)
        win = Window(0, y0, width, y1 - y0)
        lab = labels(win).astype(np.int32, copy=False)
        score = scores(win) if scores is not None else None
        pieces = [(shapely.geometry.shape(g), int(v))
                  for g, v in shapes(lab, mask=lab >= 0, connectivity=4,
                                     transform=rasterio.Affine.translation(0, y0))]
        ids = _piece_ids(pieces, lab.shape, y0)
        stats = _piece_stats(ids, score, len(pieces))
        gids = np.arange(next_id, next_id + len(pieces))
        top = set(gids[ids[0][ids[0] > 0] - 1].tolist()) if y0 > 0 else set()
        bottom = set(gids[ids[-1][ids[-1] > 0] - 1].tolist()) if y1 < height else set()
        on_edge = np.array([g in top or g in bottom for g in gids.tolist()], dtype=bool)
        geoms = _simplified_strip(pieces, simplify, on_edge, ((y0,) if y0 > 0 else ()) + ((y1,) if y1 < height else ()))
        for k, ((_, value), geom, gid) in enumerate(zip(pieces, geoms, gids.tolist())):
            reg = Region(value, [geom], int(stats[0][k]), float(stats[1][k]), float(stats[2][k]))
            if gid in top or gid in bottom:
                open_regions[gid] = reg
            else:
                yield reg
        if prev_ids is not None:
            for a, b in _touching(prev_ids, prev_labels, ids[0] + np.where(ids[0] > 0, next_id - 1, 0), lab[0]):
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[rb] = ra
                    open_regions[ra].absorb(open_regions.pop(rb))
        still_open = {root(g) for g in bottom}
        for r in [r for r in open_regions if r not in still_open]:
            yield open_regions.pop(r)
        prev_ids = ids[-1] + np.where(ids[-1] > 0, next_id - 1, 0)
        prev_labels = lab[-1].copy()
        next_id += len(pieces)
    yield from open_regions.values()


def _piece_ids(pieces, shape, y0: int) -> np.ndarray:
    """``[h, w]`` 1-based index of the piece each pixel belongs to (0: none)."""
    if not pieces:
        return np.zeros(shape, np.int32)
    return rasterize(((g, i) for i, (g, _) in enumerate(pieces, 1)), out_shape=shape, fill=0, dtype="int32",
                     transform=rasterio.Affine.translation(0, y0))


def _piece_stats(ids: np.ndarray, score: np.ndarray | None, n: int):
    """Pixel count, score sum and score maximum of each piece."""
    flat = torch.from_numpy(ids.ravel().astype(np.int64))
    count = torch.bincount(flat, minlength=n + 1)[1:]
    if score is None:
        return count.numpy(), np.zeros(n), np.zeros(n)
    s = torch.from_numpy(np.nan_to_num(score.astype(np.float64, copy=False).ravel(), nan=0.0))
    total = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, flat, s)[1:]
    peak = torch.full((n + 1,), float("-inf"), dtype=torch.float64).scatter_reduce_(0, flat, s, "amax")[1:]
    return count.numpy(), total.numpy(), peak.numpy()


def _touching(prev_ids, prev_labels, cur_ids, cur_labels) -> set[tuple[int, int]]:
    """Pairs of pieces (above, below) that share an edge across the strip boundary: same label, same column."""
    m = (prev_ids > 0) & (cur_ids > 0) & (prev_labels == cur_labels)
    return set(zip(prev_ids[m].tolist(), cur_ids[m].tolist()))


def _simplified_strip(pieces: list, tolerance: float, on_edge: np.ndarray, rows: tuple[int, ...]) -> list:
    """A strip's pieces (``(polygon, label)``) simplified: those inside the strip (regions complete in it) all at
    once, as GEOS simplifies any polygon; those on a strip edge (``on_edge``) with the vertices on the edge ``rows``
    kept in place (``simplify_piece``)."""
    geoms = [g for g, _ in pieces]
    if tolerance <= 0 or not geoms:
        return geoms
    inside = np.flatnonzero(~on_edge)
    out = np.array(geoms, dtype=object)
    out[inside] = shapely.simplify(out[inside], tolerance, preserve_topology=True)
    for k in np.flatnonzero(on_edge):
        out[k] = simplify_piece(geoms[k], tolerance, rows)
    return list(out)


def simplify_piece(piece, tolerance: float, rows: tuple[int, ...]):
    """``piece`` (pixel coordinates) simplified to ``tolerance`` pixels (Douglas-Peucker, GEOS's topology-preserving
    simplifier) with every vertex on the pixel rows ``rows`` (strip edges) left in place: its rings are cut at those
    vertices into runs that are simplified together (end points stay), so the piece still meets the pieces of the
    neighbouring strips exactly. A run that leaves an edge row and comes back to it keeps its vertex farthest from
    the row: no simplified edge lies on a strip edge unless it did before, so uniting the pieces of a region never
    closes a gap between them. A piece whose simplification is not a valid polygon stays exact."""
    runs, counts = [], []
    for ring in (piece.exterior, *piece.interiors):
        xy = np.asarray(ring.coords)[:-1]
        ring_runs = [part for run in _runs(xy, np.isin(xy[:, 1], rows)) for part in _split_at_deepest(run)]
        runs += ring_runs
        counts.append(len(ring_runs))
    simple = shapely.get_parts(shapely.simplify(shapely.MultiLineString(runs), tolerance, preserve_topology=True))
    if len(simple) != len(runs):
        return piece
    simple = [shapely.get_coordinates(g) for g in simple]
    if any((a[0] != b[0]).any() or (a[-1] != b[-1]).any() for a, b in zip(simple, runs)):
        return piece  # an end point moved (a ring touching itself at a kept vertex): keep the exact piece
    rings, at = [], 0
    for n in counts:
        parts = simple[at:at + n]
        rings.append(np.concatenate([parts[0]] + [p[1:] for p in parts[1:]]))
        at += n
    if any(len(r) < 4 for r in rings):
        return piece
    out = shapely.Polygon(rings[0], rings[1:])
    return out if out.is_valid else piece


def _runs(ring: np.ndarray, pinned: np.ndarray) -> list[np.ndarray]:
    """An open ring's coordinates cut into runs from one pinned vertex to the next (closing the ring). A ring with
    fewer than two pinned vertices is also cut at the vertex half-way round, so no run is closed (a closed line's
    end point is not kept by the simplifier)."""
    idx = np.flatnonzero(pinned)
    if len(idx) < 2:
        first = int(idx[0]) if len(idx) else 0
        idx = np.sort([first, (first + len(ring) // 2) % len(ring)])
    closed = np.concatenate([ring, ring[:1]])
    runs = [closed[a:b + 1] for a, b in zip(idx[:-1], idx[1:])]
    runs.append(np.concatenate([closed[idx[-1]:-1], closed[:idx[0] + 1]]))
    return runs


def _split_at_deepest(run: np.ndarray) -> list[np.ndarray]:
    """A run that starts and ends on the same row, cut at its vertex farthest from that row (one run otherwise)."""
    if len(run) <= 2 or run[0, 1] != run[-1, 1]:
        return [run]
    k = int(np.argmax(np.abs(run[1:-1, 1] - run[0, 1]))) + 1
    return [run[:k + 1], run[k:]]


def region_geometry(reg: Region, transform):
    """The region's polygon in map coordinates (its pieces, simplified or not, united)."""
    geom = reg.pieces[0] if len(reg.pieces) == 1 else shapely.union_all(reg.pieces)
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    return shapely.affinity.affine_transform(geom, (a, b, d, e, c, f))


def pixel_tolerance(transform, simplify: float) -> float:
    """A tolerance in map units as pixels: divided by the largest stretch of the pixel-to-map transform, so that
    no simplified boundary moves more than ``simplify`` map units in any direction."""
    if simplify <= 0:
        return 0.0
    linear = np.array([[transform.a, transform.b], [transform.d, transform.e]], dtype=float)
    return simplify / float(np.linalg.norm(linear, 2))


def area_unit(crs) -> str:
    """The unit of the areas measured in ``crs``: ``m^2`` in a metric CRS, ``deg^2`` in a geographic one, the
    CRS's own linear unit squared otherwise (``US survey foot^2``); ``px^2`` without a CRS."""
    if crs is None:
        return "px^2"
    if crs.is_geographic:
        return "deg^2"
    unit = (crs.linear_units or "").lower()
    return "m^2" if unit in ("metre", "meter", "m") else f"{unit or 'map unit'}^2"


def pixel_area(transform) -> float:
    return abs(transform.a * transform.e - transform.b * transform.d)


@dataclass
class Features:
    """Polygons and their attribute columns, ready for one OGR layer."""

    geometries: list = field(default_factory=list)
    columns: dict[str, list] = field(default_factory=dict)

    @classmethod
    def with_fields(cls, names) -> "Features":
        """An empty collection whose layer has these fields even if no polygon is added."""
        return cls(columns={k: [] for k in names})

    def add(self, geom, **attrs) -> None:
        self.geometries.append(geom)
        for k, v in attrs.items():
            self.columns.setdefault(k, []).append(v)

    def __len__(self) -> int:
        return len(self.geometries)


def write_features(features: Features, path: str | Path, crs, layer: str) -> Path:
    """One polygon layer at ``path`` (GeoPackage or GeoJSON by suffix), written under a temporary name and renamed
    when complete. A GeoPackage keeps the raster's CRS; GeoJSON is RFC 7946 -- longitude/latitude on WGS84, no
    ``crs`` member (GDAL's ``RFC7946=YES`` reprojects it) -- except for a picture without a CRS, whose polygons stay
    in pixel coordinates. The ``area`` attributes are measured in the raster's CRS either way."""
    import pyogrio.raw

    path = Path(path)
    driver = driver_for(path)
    multi = any(g.geom_type == "MultiPolygon" for g in features.geometries)
    geoms = [shapely.MultiPolygon([g]) if multi and g.geom_type == "Polygon" else g for g in features.geometries]
    columns = features.columns or {"id": []}  # OGR wants a field even in an empty layer
    with atomic_path(path) as partial, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided")  # pictures without georeference: knowingly
        warnings.filterwarnings("ignore", "The filename extension should be")  # the temporary name; driver given
        pyogrio.raw.write(partial, geometry=np.array(shapely.to_wkb(geoms), dtype=object) if geoms else
                          np.array([], dtype=object),
                          field_data=[np.asarray(v) for v in columns.values()], fields=list(columns),
                          crs=crs.to_wkt() if crs is not None else None, driver=driver, layer=layer,
                          geometry_type="MultiPolygon" if multi else "Polygon",
                          # GeoPackage 1.2: what every GDAL and QGIS in use reads without a version warning
                          dataset_options={"VERSION": "1.2"} if driver == "GPKG" else None,
                          layer_options={"RFC7946": "YES"} if driver == "GeoJSON" and crs is not None else None)
    return path


@dataclass
class VectorSummary:
    path: str
    polygons: int
    dropped_small: int


def _strip_progress(labels: Callable[[Window], np.ndarray], src, desc: str, enabled: bool):
    """``labels`` counting the pixels of each strip it reads on a progress bar (shown after 2 s: a 16 Mpx map
    takes minutes), and the bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=src.height * src.width, desc=desc, unit="px", unit_scale=True, delay=2, disable=not enabled)

    def counted(win: Window) -> np.ndarray:
        out = labels(win)
        bar.update(int(win.width * win.height))
        return out

    return counted, bar


def class_map_polygons(class_map: str | Path, *, confidence: str | Path | None = None, min_area: float = 0.0,
                       simplify: float = 0.0, progress: bool = False) -> tuple[Features, int]:
    """Polygons of a farslip class map (its ``CLASS_NAMES`` tag names the classes; nodata pixels make none), with
    class, class index, area (map units^2), pixels and the mean confidence when ``confidence`` is given.
    Regions under ``min_area`` map units^2 are left out (their pixels stay uncovered). Returns the features and how
    many regions were too small."""
    with open_dataset(class_map) as src:
        names = json.loads(src.tags().get("CLASS_NAMES", "[]"))
        nodata = src.nodata

        def labels(win):
            a = src.read(1, window=win).astype(np.int32)
            if nodata is not None:
                a[a == int(nodata)] = -1
            return a

        conf = open_dataset(confidence) if confidence else None
        labels, bar = _strip_progress(labels, src, f"polygons {Path(class_map).name}", progress)
        try:
            scores = (lambda win: conf.read(1, window=win)) if conf is not None else None
            fields = ["class", "class_index", "area", "pixels"] + (["mean_confidence"] if conf is not None else [])
            feats, small = Features.with_fields(fields), 0
            px_area = pixel_area(src.transform)
            for reg in regions(labels, src.height, src.width, scores,
                               simplify=pixel_tolerance(src.transform, simplify)):
                area = reg.pixels * px_area
                if area < min_area:
                    small += 1
                    continue
                attrs = {"class": names[reg.label] if reg.label < len(names) else str(reg.label),
                         "class_index": reg.label, "area": area, "pixels": reg.pixels}
                if conf is not None:
                    attrs["mean_confidence"] = round(reg.mean_score, 4)
                feats.add(region_geometry(reg, src.transform), **attrs)
        finally:
            bar.close()
            if conf is not None:
                conf.close()
    return feats, small


def heatmap_polygons(heatmap: str | Path, threshold: float, *, band: int = 1, query: str = "",
                     min_area: float = 0.0, simplify: float = 0.0, features: Features | None = None,
                     progress: bool = False) -> tuple[Features, int]:
    """Connected areas where a score raster is at least ``threshold`` (band ``band``), with the query, the mean
    and maximum score, area (map units^2) and pixels. Appends to ``features`` when given."""
    feats, small = features if features is not None else Features.with_fields(REGION_FIELDS), 0
    with open_dataset(heatmap) as src:
        def labels(win):
            h = src.read(band, window=win)
            return np.where(h >= threshold, 0, -1).astype(np.int32)  # NaN (nodata) compares False

        px_area = pixel_area(src.transform)
        labels, bar = _strip_progress(labels, src, f"regions {query!r}", progress)
        with bar:
            for reg in regions(labels, src.height, src.width, lambda win: src.read(band, window=win),
                               simplify=pixel_tolerance(src.transform, simplify)):
                area = reg.pixels * px_area
                if area < min_area:
                    small += 1
                    continue
                feats.add(region_geometry(reg, src.transform), query=query, score=round(reg.mean_score, 4),
                          max_score=round(reg.score_max, 4), area=area, pixels=reg.pixels)
    return feats, small


def vectorize_class_map(class_map: str | Path, out: str | Path, *, confidence: str | Path | None = None,
                        min_area: float = 0.0, simplify: float = 0.0, gdal_cache_mb: int = 256,
                        progress: bool = False) -> VectorSummary:
    """``segment --vector``: the class map's polygons written to ``out`` (.gpkg or .geojson). GDAL's block cache
    is capped at ``gdal_cache_mb`` (as in ``segment``; by default GDAL takes up to 5% of the machine's memory,
    which the strips, read once each, do not need)."""
    from .scene import bounded_gdal_cache

    driver_for(out)
    with bounded_gdal_cache(gdal_cache_mb):
        feats, small = class_map_polygons(class_map, confidence=confidence, min_area=min_area, simplify=simplify,
                                          progress=progress)
    with open_dataset(class_map) as src:
        crs = src.crs
    write_features(feats, out, crs, layer=Path(out).stem)
    return VectorSummary(str(out), len(feats), small)

