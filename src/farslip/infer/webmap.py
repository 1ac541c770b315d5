"""``--html`` / ``farslip view``: one self-contained HTML map of farslip's outputs that works offline.

The map is built with folium (Leaflet); Leaflet's JavaScript and CSS are inlined from the ``django-js-lib-leaflet``
package (Leaflet 1.9.4 as released, no Django needed), its icons as data URIs, so the file opens without a
network -- folium itself would link them from a CDN. Layers:

* the image (decimated; JPEG, or WebP with transparency where it has no data);
* each class map (its colour table; a palette PNG), confidence or heatmap (``inferno``; WebP) as a
  semi-transparent overlay that the layer control switches on and off, with a legend;
* each vector file (polygons with their attributes as tooltips, coloured by class when a class map names it),
  simplified to half a pixel of the page's grid and rounded to 1e-7 degrees (about 1 cm).

Rasters in a CRS are warped to Web Mercator (what Leaflet displays) from their overviews, so the overlays sit
exactly where the vectors are; what lies outside a warped raster is transparent (no black wedges around a rotated
footprint); pictures without a georeference are shown in pixel coordinates. Every layer is at most ``max_side``
pixels on its longer side, so the page's size follows ``max_side``, not the scene's (a 16 Mpx scene with its class
map, confidence and polygons: a few MB).
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from ..core.errors import FarslipError
from ..core.files import atomic_write, refuse_overwriting_inputs
from .raster import check_georeference, open_dataset, open_raster, read_thumbnail

MERCATOR = "EPSG:3857"
#: Vectors beyond this many polygons are left out of the page (largest first kept), which stays responsive; so
#: are polygons smaller than a pixel of the page's grid.
MAX_FEATURES = 20000


class ViewError(FarslipError, ValueError):
    """An output that is not a farslip raster or vector file."""


@dataclass
class Overlay:
    name: str
    uri: str                               # the layer's picture on the map's display grid, as a data URI
    legend: list[tuple[str, str]] = field(default_factory=list)  # (label, css colour)
    colorbar: str | None = None            # css gradient for score layers


@dataclass
class Grid:
    """The display grid: Web Mercator for georeferenced rasters, pixels otherwise."""

    crs: object | None
    transform: object
    width: int
    height: int
    bounds_latlon: list[list[float]]       # [[south, west], [north, east]] (pixels: [[-H, 0], [0, W]])

    @property
    def simple(self) -> bool:
        return self.crs is None


def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JavaScript and its CSS (icons inlined as data URIs)."""
    root = resources.files("js_lib_leaflet") / "static" / "js_lib_leaflet"
    js = (root / "leaflet.js").read_text(encoding="utf-8")
    css = (root / "leaflet.css").read_text(encoding="utf-8")

    def inline(m):
        data = (root / m.group(1)).read_bytes()
        return f"url(data:image/png;base64,{base64.b64encode(data).decode()})"

    return js, re.sub(r"url\((images/[\w.-]+\.png)\)", inline, css)


def _data_uri(image, fmt: str, **options) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def picture_uri(rgba: np.ndarray) -> str:
    """``[h, w, 4]`` as a compact data URI: JPEG when it is opaque everywhere, WebP with its transparency
    otherwise (lossy, as the JPEG; browsers have shown WebP since 2020)."""
    from PIL import Image

    if (rgba[..., 3] == 255).all():
        return _data_uri(Image.fromarray(np.ascontiguousarray(rgba[..., :3])), "JPEG", quality=85)
    return _data_uri(Image.fromarray(rgba, "RGBA"), "WEBP", quality=80, method=4)


def palette_uri(index: np.ndarray, lut: np.ndarray) -> str:
    """A class-index picture (``[h, w]`` uint8) and its ``[256, 4]`` RGBA colour table as a palette PNG, the
    transparency per index in its tRNS chunk: about a tenth of the RGBA PNG's size."""
    from PIL import Image

    im = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index).tobytes())
    im.putpalette(lut[:, :3].astype(np.uint8).ravel().tolist())
    return _data_uri(im, "PNG", optimize=True, transparency=bytes(lut[:, 3].astype(np.uint8).tolist()))


def display_grid(src, max_side: int) -> Grid:
    """The grid the page shows ``src`` on, about ``max_side`` pixels on its longer side."""
    f = max(src.width, src.height) / max_side
    w, h = (max(1, round(src.width / f)), max(1, round(src.height / f))) if f > 1 else (src.width, src.height)
    if src.crs is None:
        return Grid(None, src.transform, w, h, [[-src.height, 0], [0, src.width]])
    transform, dw, dh = calculate_default_transform(src.crs, MERCATOR, src.width, src.height, *src.bounds,
                                                    dst_width=w, dst_height=h)
    west, north = transform @ (0, 0)
    east, south = transform @ (dw, dh)
    w84 = transform_bounds(MERCATOR, "EPSG:4326", west, south, east, north)
    return Grid(MERCATOR, transform, dw, dh, [[w84[1], w84[0]], [w84[3], w84[2]]])


def _to_grid(bands: np.ndarray, src, grid: Grid, resampling: Resampling, nodata=None) -> np.ndarray:
    """``[c, h, w]`` decimated bands of ``src`` (read at ``bands.shape``) onto the display grid."""
    if grid.simple:
        if bands.shape[1:] == (grid.height, grid.width):
            return bands
        from PIL import Image  # pixel grid: plain resize

        return np.stack([np.asarray(Image.fromarray(b).resize((grid.width, grid.height), Image.NEAREST))
                         for b in bands])
    c, h, w = bands.shape
    src_transform = src.transform @ rasterio.Affine.scale(src.width / w, src.height / h)
    out = np.full((c, grid.height, grid.width), nodata if nodata is not None else 0, bands.dtype)
    reproject(bands, out, src_transform=src_transform, src_crs=src.crs, dst_transform=grid.transform,
              dst_crs=grid.crs, resampling=resampling, src_nodata=nodata, dst_nodata=nodata)
    return out


def _read_shape(src, grid: Grid) -> tuple[int, int]:
    f = max(src.width, src.height) / max(grid.width, grid.height)
    return (max(1, round(src.height / f)), max(1, round(src.width / f))) if f > 1 else (src.height, src.width)


def image_layer(image: str | Path, grid: Grid, bands: Sequence[int] | None = None) -> np.ndarray:
    """The image as RGBA on the display grid: transparent where it has no data and outside its footprint."""
    r = open_raster(image, bands)
    try:
        rgb = read_thumbnail(r, max(_read_shape(r.src, grid)))
        alpha = np.full((1,) + rgb.shape[1:], 255, np.uint8) if r.all_valid else \
            r.src.read_masks(r.bands, out_shape=(3,) + rgb.shape[1:], resampling=Resampling.nearest).min(0)[None]
        # the warp leaves alpha 0 where no source pixel lands (the corners a rotated footprint leaves)
        return _to_grid(np.concatenate([rgb, alpha]), r.src, grid, Resampling.bilinear).transpose(1, 2, 0)
    finally:
        r.close()


def raster_overlay(path: str | Path, grid: Grid) -> list[Overlay]:
    """A class map (uint8 with a colour table) as one overlay, or each band of a score raster as one."""
    with open_dataset(path) as src:
        check_georeference(src, path)
        names = json.loads(src.tags().get("CLASS_NAMES", "[]"))
        shape = _read_shape(src, grid)
        if src.dtypes[0] == "uint8" and _has_colormap(src):
            cls = src.read(1, out_shape=shape, resampling=Resampling.nearest)
            nod = int(src.nodata) if src.nodata is not None else 255
            cls = _to_grid(cls[None], src, grid, Resampling.nearest, nodata=nod)[0]
            cmap = src.colormap(1)
            lut = np.zeros((256, 4), np.uint8)
            for i, rgba in cmap.items():
                lut[i] = (*rgba[:3], 255)
            lut[nod] = 0
            legend = [(n, _css(cmap[i])) for i, n in enumerate(names)] if names else []
            return [Overlay(f"classes: {Path(path).name}", palette_uri(cls, lut), legend)]
        if np.dtype(src.dtypes[0]).kind != "f":
            raise ViewError(f"{path}: neither a farslip class map (uint8 with a colour table) nor a score raster")
        out = []
        for b in range(1, src.count + 1):
            v = src.read(b, out_shape=shape, resampling=Resampling.bilinear).astype(np.float32)
            v = _to_grid(v[None], src, grid, Resampling.bilinear, nodata=np.nan)[0]
            label = src.descriptions[b - 1] or f"band {b}"
            kind = src.tags().get("FARSLIP_KIND", Path(path).stem)
            out.append(Overlay(f"{kind}: {label}", picture_uri(_inferno(v)), colorbar=_inferno_css()))
        return out


def _has_colormap(src) -> bool:
    try:
        return bool(src.colormap(1))
    except ValueError:
        return False


def _css(rgba) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgba[:3])


def _inferno(v: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] as inferno colours; NaN transparent, and low scores fading out so the image shows."""
    from matplotlib import colormaps

    rgba = (colormaps["inferno"](np.nan_to_num(np.clip(v, 0, 1), nan=0.0)) * 255).astype(np.uint8)
    rgba[..., 3] = np.where(np.isfinite(v), (80 + 175 * np.clip(np.nan_to_num(v), 0, 1)), 0).astype(np.uint8)
    return rgba


def _inferno_css() -> str:
    from matplotlib import colormaps

    stops = [_css(np.array(colormaps["inferno"](t)) * 255) for t in np.linspace(0, 1, 6)]
    return f"linear-gradient(to right, {', '.join(stops)})"


def vector_geojson(path: str | Path, grid: Grid, colours: dict[str, str]) -> tuple[dict, int]:
    """A vector file as a GeoJSON FeatureCollection in the page's coordinates (WGS84, or pixels): the largest
    ``MAX_FEATURES`` polygons of at least one pixel of the display grid (smaller ones cannot be seen on the page),
    simplified to half such a pixel; and how many were left out."""
    import pyogrio
    import shapely

    meta, _, geoms, fields = pyogrio.raw.read(path)
    crs = meta.get("crs")
    geoms = shapely.from_wkb(geoms)
    if grid.simple:
        pixel = grid.bounds_latlon[1][1] / grid.width  # a display pixel in the picture's pixels
    elif crs:
        pixel = abs(grid.transform.a)  # in Web Mercator metres, where the page draws
        geoms = _reprojected(geoms, crs, MERCATOR)
    else:
        pixel = 0.0  # a file without a CRS over a georeferenced page: drawn as it is
    area = shapely.area(geoms) / max(pixel, 1e-12) ** 2
    order = [i for i in np.argsort(-area).tolist() if area[i] >= 1 or not pixel][:MAX_FEATURES]
    shown = shapely.simplify(geoms[order], pixel / 2, preserve_topology=True) if pixel else geoms[order]
    if grid.simple:  # pixels, y pointing down: Leaflet's simple CRS has y up
        shown = shapely.transform(shown, lambda xy: xy * np.array([1.0, -1.0]))
    elif crs:
        shown = _reprojected(shown, MERCATOR, "EPSG:4326", decimals=7)
    feats = []
    for k, i in enumerate(order):
        props = {name: _plain(col[i]) for name, col in zip(meta["fields"], fields)}
        props["_colour"] = colours.get(str(props.get("class", props.get("query", ""))), "#00e5ff")
        feats.append({"type": "Feature", "geometry": shapely.geometry.mapping(shown[k]), "properties": props})
    return {"type": "FeatureCollection", "features": feats}, len(geoms) - len(order)


def _reprojected(geoms: np.ndarray, src_crs, dst_crs, decimals: int | None = None) -> np.ndarray:
    """Every vertex of ``geoms`` moved from ``src_crs`` to ``dst_crs`` in one call (GDAL/PROJ), rounded to
    ``decimals`` when given."""
    import shapely
    from rasterio.warp import transform

    def move(xy: np.ndarray) -> np.ndarray:
        if not len(xy):
            return xy
        x, y = transform(src_crs, dst_crs, xy[:, 0], xy[:, 1])
        out = np.column_stack([x, y])
        return out if decimals is None else out.round(decimals)

    return shapely.transform(geoms, move)


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def write_html(out: str | Path, *, image: str | Path | None = None, rasters: Sequence[str | Path] = (),
               vectors: Sequence[str | Path] = (), title: str | None = None, max_side: int = 2048,
               bands: Sequence[int] | None = None, opacity: float = 0.6, progress: bool = False) -> Path:
    """One offline HTML page: ``image`` under the ``rasters`` (class maps, confidences, heatmaps) and the
    ``vectors``, each switchable (the first raster layer is shown, the others start switched off), with legends.
    The grid is the first raster's (or the image's). ``progress``: a bar over the layers when the page takes more
    than a couple of seconds (a 16 Mpx scene's warps and polygons)."""
    import folium
    from tqdm.auto import tqdm

    rasters, vectors = [Path(p) for p in rasters], [Path(p) for p in vectors]
    if image is None and rasters:
        image = _source_of(rasters[0])
    ref = rasters[0] if rasters else image
    if ref is None:
        raise ViewError("nothing to show: give an image or a farslip raster")
    with open_dataset(ref) as src:
        check_georeference(src, ref)
        grid = display_grid(src, max_side)
    m = folium.Map(crs="Simple" if grid.simple else "EPSG3857", tiles=None, control_scale=not grid.simple,
                   zoom_snap=0.25)
    if grid.simple:  # a screen pixel per picture pixel at zoom 0: a larger picture fits the window only below it
        m.options["minZoom"] = -8
    m.default_js, m.default_css = [], []  # Leaflet comes inlined below, not from a CDN
    js, css = leaflet_assets()
    m.get_root().header.add_child(folium.Element(f"<style>{css}</style>\n<script>{js}</script>"), name="leaflet")
    bar = tqdm(total=(image is not None) + len(rasters) + len(vectors), desc=f"web map {Path(out).name}",
               unit="layer", delay=2, disable=not progress)
    if image is not None:
        folium.raster_layers.ImageOverlay(picture_uri(image_layer(image, grid, bands)), grid.bounds_latlon,
                                          name=f"image: {Path(image).name}", pixelated=False).add_to(m)
        bar.update()
    colours: dict[str, str] = {}
    legends = []
    for path in rasters:
        for ov in raster_overlay(path, grid):
            folium.raster_layers.ImageOverlay(ov.uri, grid.bounds_latlon, name=ov.name, opacity=opacity,
                                              pixelated=True, show=not legends).add_to(m)
            colours.update(dict(ov.legend))
            legends.append(ov)
        bar.update()
    for path in vectors:
        collection, left_out = vector_geojson(path, grid, colours)
        fields = [k for k in (collection["features"][0]["properties"] if collection["features"] else {})
                  if not k.startswith("_")]
        label = f"polygons: {path.name}" + (f" ({len(collection['features'])} largest of "
                                             f"{len(collection['features']) + left_out})" if left_out else "")
        layer = folium.GeoJson(collection, name=label, style_function=_vector_style,
                               tooltip=folium.GeoJsonTooltip(fields=fields) if fields else None)
        layer.add_to(m)
        bar.update()
    bar.close()
    folium.LayerControl(collapsed=False).add_to(m)
    m.get_root().html.add_child(folium.Element(_legend_html(legends, title or Path(ref).name)))
    m.fit_bounds(grid.bounds_latlon)
    return atomic_write(out, m.get_root().render())


def _vector_style(feature) -> dict:
    c = feature["properties"].get("_colour", "#00e5ff")
    return {"color": c, "weight": 1.5, "fillColor": c, "fillOpacity": 0.15}


def _legend_html(overlays: Sequence[Overlay], title: str) -> str:
    rows = []
    for ov in overlays:
        rows.append(f"<div style='font-weight:bold;margin-top:4px'>{html.escape(ov.name)}</div>")
        for label, colour in ov.legend:
            rows.append(f"<div><span style='display:inline-block;width:12px;height:12px;background:{colour};"
                        f"margin-right:4px;vertical-align:middle'></span>{html.escape(label)}</div>")
        if ov.colorbar:
            rows.append(f"<div style='width:140px;height:10px;background:{ov.colorbar}'></div>"
                        "<div style='display:flex;justify-content:space-between;width:140px'><span>0</span>"
                        "<span>1</span></div>")
    return ("<div id='farslip-legend' style='position:fixed;bottom:28px;right:10px;z-index:9999;background:white;"
            "padding:6px 8px;border-radius:4px;font:12px sans-serif;box-shadow:0 1px 4px rgba(0,0,0,.4);"
            f"max-height:60%;overflow:auto'><div style='font-weight:bold'>{html.escape(title)}</div>"
            + "".join(rows) + "</div>")


def _source_of(raster: Path) -> Path | None:
    """The image a farslip raster was made from (its ``FARSLIP_SOURCE`` tag), when it still exists."""
    try:
        with open_dataset(raster) as src:
            tag = src.tags().get("FARSLIP_SOURCE")
    except rasterio.errors.RasterioIOError:
        raise ViewError(f"{raster}: not a raster GDAL can read (farslip view shows farslip's .tif outputs and "
                        ".gpkg/.geojson polygons)") from None
    return Path(tag) if tag and Path(tag).exists() else None


def view(outputs: Sequence[str | Path], html_path: str | Path | None = None, *, image: str | Path | None = None,
         **kw) -> Path:
    """``farslip view``: rasters and vector files in ``outputs`` (sorted by kind) on one page, written to
    ``html_path`` (default: beside the first output, ``.html``). The page is never written over one of the files
    it shows (the image found from the rasters' ``FARSLIP_SOURCE`` tag included)."""
    rasters, vectors = [], []
    for p in map(Path, outputs):
        if not p.exists():
            raise ViewError(f"{p}: file not found")
        (vectors if p.suffix.lower() in (".gpkg", ".geojson", ".json") else rasters).append(p)
    first = (rasters or vectors or [None])[0]
    if first is None:
        raise ViewError("nothing to show")
    out = Path(html_path) if html_path else first.with_suffix(".html")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ViewError(f"--out {out}: the map is an HTML page; give a .html file name")
    shown = rasters + vectors + [p for p in [image] + [_source_of(r) for r in rasters] if p]
    refuse_overwriting_inputs([out], shown, hint="choose another --out")
    return write_html(out, image=image, rasters=rasters, vectors=vectors, **kw)
