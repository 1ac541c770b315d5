"""GIS outputs read back: COG layout (GDAL's rules), polygons that cover the class map's pixels exactly, heatmaps
that keep the georeference and skip nodata windows, and the HTML map rendered in a real browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.features import rasterize
from rasterio.transform import from_origin

import farslip

from farslip.infer import cog, scene, vectors, webmap
from farslip.infer.localization import locate, query_probabilities

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000, 4600000, 0.5, 0.5)
PALETTE = np.array([[230, 30, 30], [30, 30, 230], [250, 230, 0]])


def _geotiff(path, arr, nodata=None):
    count, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=arr.dtype, crs=CRS,
                       transform=TRANSFORM, nodata=nodata) as dst:
        dst.write(arr)
    return path


def _blobs(h, w, n_classes=3, seed=0):
    """A class map with regions of every size, holes and regions touching only at corners."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    f = np.sin(xx / 13) + np.cos(yy / 9) + rng.normal(0, 0.3, (h, w))
    return (np.round(1.5 * f).astype(int) % n_classes).astype(np.uint8)


def _class_map(tmp_path, lab, name="cm.tif"):
    like = rasterio.open(_geotiff(tmp_path / "like.tif", np.zeros((1,) + lab.shape, np.uint8)))
    with cog.class_map_writer(tmp_path / name, like, ["red", "blue", "yellow"], PALETTE, source=like.name) as dst:
        for _, win in dst.block_windows(1):
            dst.write(lab[win.toslices()], 1, window=win)
    like.close()
    return tmp_path / name


def test_cog_layout_georeference_and_colours(tmp_path):
    lab = _blobs(900, 1300)
    lab[:100, :200] = 255
    path = _class_map(tmp_path, lab)
    assert cog.validate_cog(path) == []
    with rasterio.open(path) as src:
        assert (src.crs.to_string(), src.transform, src.nodata) == (CRS, TRANSFORM, 255)
        assert src.overviews(1) and src.block_shapes[0] == (512, 512)
        assert src.colormap(1)[2][:3] == (250, 230, 0)
        assert json.loads(src.tags()["CLASS_NAMES"]) == ["red", "blue", "yellow"]
        assert (src.read(1) == lab).all()
    # the validator is not a rubber stamp: an ordinary striped GeoTIFF of the same size fails it
    plain = _geotiff(tmp_path / "plain.tif", lab[None])
    assert cog.validate_cog(plain)
    assert not list(tmp_path.glob(".*"))  # no staging or partial files left


def test_cog_writer_leaves_nothing_when_it_fails(tmp_path):
    like = rasterio.open(_geotiff(tmp_path / "like.tif", np.zeros((1, 64, 64), np.uint8)))
    with pytest.raises(RuntimeError):
        with cog.score_writer(tmp_path / "heat.tif", like, ["q"], kind="similarity"):
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["like.tif"]


@pytest.mark.parametrize("strip_rows", [None, 7, 1])
def test_polygons_cover_the_class_map_exactly(tmp_path, strip_rows, monkeypatch):
    lab = _blobs(203, 157)
    lab[:20, :30] = 255  # nodata makes no polygon
    path = _class_map(tmp_path, lab)
    if strip_rows:  # regions cut by strip edges must be joined again
        monkeypatch.setattr(vectors, "STRIP_PIXELS", strip_rows * 157)
    feats, small = vectors.class_map_polygons(path)
    assert small == 0 and all(g.is_valid for g in feats.geometries)
    burnt = rasterize(((g, v + 1) for g, v in zip(feats.geometries, feats.columns["class_index"])),
                      out_shape=lab.shape, transform=TRANSFORM, dtype="int32")
    assert (burnt == np.where(lab == 255, 0, lab.astype(np.int32) + 1)).all()
    assert sum(feats.columns["pixels"]) == int((lab != 255).sum())
    # 4-connected regions are single polygons: no two polygons of one class share an edge
    assert all(g.geom_type == "Polygon" for g in feats.geometries)


def _worst_distance(simplified, exact):
    """The largest distance (map units) from a vertex of an exact region to the boundary of its simplified one,
    regions matched by class, pixel count and overlap."""
    tree, worst = shapely.STRtree(exact.geometries), 0.0
    for g, c, n in zip(simplified.geometries, simplified.columns["class_index"], simplified.columns["pixels"]):
        same = [i for i in tree.query(g) if (exact.columns["class_index"][i], exact.columns["pixels"][i]) == (c, n)]
        e = exact.geometries[max(same, key=lambda i: shapely.intersection(g, exact.geometries[i]).area)]
        worst = max(worst, float(shapely.distance(shapely.points(shapely.get_coordinates(e)), g.boundary).max()))
    return worst


def test_simplified_in_strips_as_in_one_piece(tmp_path, monkeypatch):
    # pieces are simplified strip by strip with the strip edges kept: the regions come out whole, valid, with the
    # same pixels, and no boundary moves further than simplifying each region at once moves it
    lab = _blobs(203, 157)
    lab[:20, :30] = 255
    path = _class_map(tmp_path, lab)
    exact, _ = vectors.class_map_polygons(path)
    whole, _ = vectors.class_map_polygons(path, simplify=0.5)
    monkeypatch.setattr(vectors, "STRIP_PIXELS", 7 * 157)
    strips, _ = vectors.class_map_polygons(path, simplify=0.5)
    for simplified in (whole, strips):
        assert len(simplified) == len(exact) and sorted(simplified.columns["pixels"]) == sorted(exact.columns["pixels"])
        assert all(g.is_valid and g.geom_type == "Polygon" for g in simplified.geometries)
        assert sum(shapely.get_num_coordinates(simplified.geometries)) < 0.75 * sum(
            shapely.get_num_coordinates(exact.geometries))
    assert _worst_distance(strips, exact) <= _worst_distance(whole, exact) + 1e-9
    # a blob of another class across a strip edge notches the region's piece on each side; simplified, each notch
    # keeps its deepest vertex, so uniting the two pieces does not close the region's hole over the blob
    lab = np.zeros((14, 12), np.uint8)
    lab[6:8, 5:7] = 1
    path = _class_map(tmp_path, lab, "notch.tif")
    monkeypatch.setattr(vectors, "STRIP_PIXELS", 7 * 12)
    feats, _ = vectors.class_map_polygons(path, simplify=0.75)
    (region,) = [g for g, c in zip(feats.geometries, feats.columns["class_index"]) if c == 0]
    assert len(region.interiors) == 1 and not region.contains(shapely.Point(TRANSFORM * (6, 7)))


def test_vector_files_read_back_with_attributes(tmp_path):
    lab = _blobs(120, 160)
    path = _class_map(tmp_path, lab)
    conf = rasterio.open(path)
    with cog.score_writer(tmp_path / "conf.tif", conf, ["confidence"], kind="confidence") as dst:
        dst.write(np.full((1,) + lab.shape, 0.75, np.float32))
    conf.close()
    full = vectors.vectorize_class_map(path, tmp_path / "all.gpkg", confidence=tmp_path / "conf.tif")
    kept = vectors.vectorize_class_map(path, tmp_path / "big.geojson", confidence=tmp_path / "conf.tif",
                                       min_area=20.0, simplify=1.0)
    assert kept.polygons + kept.dropped_small == full.polygons and kept.dropped_small > 0
    for f, crs in (("all.gpkg", CRS), ("big.geojson", "EPSG:4326")):  # GeoJSON is RFC 7946: WGS84
        info = pyogrio.read_info(tmp_path / f)
        assert info["crs"] == crs and info["geometry_type"] in ("Polygon", "MultiPolygon")
        assert {"class", "area", "mean_confidence"} <= set(info["fields"])
    assert "crs" not in json.loads((tmp_path / "big.geojson").read_text())  # no obsolete crs member
    native = vectors.vectorize_class_map(path, tmp_path / "big.gpkg", confidence=tmp_path / "conf.tif",
                                         min_area=20.0, simplify=1.0)
    _, _, in_utm, _ = pyogrio.raw.read(native.path)
    _, _, in_wgs84, _ = pyogrio.raw.read(tmp_path / "big.geojson")
    from rasterio.warp import transform_geom

    for a, b in zip(shapely.from_wkb(in_utm), shapely.from_wkb(in_wgs84)):
        expected = shapely.geometry.shape(transform_geom(CRS, "EPSG:4326", shapely.geometry.mapping(a)))
        assert expected.equals_exact(shapely.normalize(b), tolerance=1e-6) or \
            shapely.normalize(expected).equals_exact(shapely.normalize(b), tolerance=1e-6)
    meta, _, geoms, cols = pyogrio.raw.read(tmp_path / "big.geojson")
    attrs = dict(zip(meta["fields"], cols))
    assert set(attrs["class"]) <= {"red", "blue", "yellow"} and (attrs["area"] >= 20.0).all()
    assert np.allclose(attrs["mean_confidence"], 0.75)
    assert (attrs["area"] == attrs["pixels"] * 0.25).all()  # 0.5 m pixels
    with pytest.raises(vectors.VectorError, match=".gpkg or .geojson"):
        vectors.vectorize_class_map(path, tmp_path / "out.shp")


def test_query_probabilities_two_way_softmax():
    import torch

    logits = torch.tensor([[0.30], [0.25], [0.20], [0.10]]).view(4, 1, 1)  # 2 names of query 0, 1 of query 1, 1 bg
    owner = torch.tensor([0, 0, 1])
    p = query_probabilities(logits, owner, 2, 50.0)[:, 0, 0]
    expect0 = torch.softmax(torch.tensor([0.30, 0.10]) * 50, 0)[0]  # the best synonym against the background
    expect1 = torch.softmax(torch.tensor([0.20, 0.10]) * 50, 0)[0]
    assert torch.allclose(p, torch.stack([expect0, expect1]))


@pytest.fixture
def tiny_parts(tiny_model):
    model, _, tokenizer = tiny_model
    return model, tokenizer


def test_locate_heatmaps_regions_and_nodata_windows(tmp_path, tiny_parts, monkeypatch):
    model, tokenizer = tiny_parts
    rng = np.random.default_rng(0)
    arr = rng.integers(1, 255, (3, 150, 170), dtype=np.uint8)
    arr[:, :64, :96] = 0
    declared = _geotiff(tmp_path / "scene.tif", arr, nodata=0)
    undeclared = _geotiff(tmp_path / "plain.tif", arr)
    encoded = []
    real = scene.sliding_window_logits
    monkeypatch.setattr(scene, "sliding_window_logits",
                        lambda *a, boxes, **k: encoded.append(len(boxes[0])) or real(*a, boxes=boxes, **k))
    # one background name keeps the text tower's work (names x 80 prompts) small on a test CPU
    kw = dict(model=model, tokenizer=tokenizer, progress=False, block=64, threshold=0.2, background=["background"])
    res = locate(["storage tank,oil tank", "ship"], declared, out=tmp_path / "o", **kw)[0]
    n_declared, encoded[:] = sum(encoded), []
    plain = locate(["storage tank,oil tank", "ship"], undeclared, out=tmp_path / "p", **kw)[0]
    assert sum(encoded) > n_declared  # windows entirely in the nodata corner were not encoded
    for q, qp in zip(res.queries, plain.queries):
        assert cog.validate_cog(q.heatmap) == []
        with rasterio.open(q.heatmap) as a, rasterio.open(qp.heatmap) as b:
            assert (a.crs.to_string(), a.transform, a.shape) == (CRS, TRANSFORM, (150, 170))
            h, hp = a.read(1), b.read(1)
        valid = (arr > 0).all(axis=0)
        assert np.isnan(h[~valid]).all() and np.isfinite(h[valid]).all()
        assert np.allclose(h[valid], hp[valid], atol=1e-6)  # skipping those windows changed no valid pixel
        assert 0 <= np.nanmin(h) and np.nanmax(h) <= 1
    meta, _, geoms, cols = pyogrio.raw.read(res.regions)
    attrs = dict(zip(meta["fields"], cols))
    assert set(attrs["query"]) <= {"storage tank", "ship"} and len(geoms) == sum(q.regions for q in res.queries)
    with rasterio.open(res.queries[0].heatmap) as a:
        h = a.read(1)
    inside = rasterize(((g, 1) for g, q in zip(shapely.from_wkb(geoms), attrs["query"]) if q == "storage tank"),
                       out_shape=h.shape, transform=TRANSFORM, dtype="uint8").astype(bool)
    assert (inside == (h >= 0.2)).all()  # regions are exactly the pixels at or above the threshold
    assert (tmp_path / "o" / "scene.locate.png").stat().st_size > 0
    summary = json.loads((tmp_path / "o" / "scene.locate.json").read_text())
    assert [q["query"] for q in summary["queries"]] == ["storage tank", "ship"]


def _browser():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(html, png, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium; `make setup` does it on Debian)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
           "--hide-scrollbars", "--window-size=900,700", "--virtual-time-budget=4000", f"--screenshot={png}",
           html.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _share(shot, rgb, tol=40):
    return float((np.abs(shot - np.array(rgb)).sum(-1) < tol).mean())


def test_html_map_renders_offline_with_layers(tmp_path):
    h, w = 400, 600
    image = _geotiff(tmp_path / "img.tif", np.full((3, h, w), 128, np.uint8))
    lab = np.zeros((h, w), np.uint8)
    lab[h // 2:] = 1
    lab[50:120, 60:200] = 2
    cm = _class_map(tmp_path, lab)
    vectors.vectorize_class_map(cm, tmp_path / "cm.geojson")
    page = webmap.view([cm, tmp_path / "cm.geojson"], tmp_path / "map.html", image=image, opacity=0.6)
    text = page.read_text()
    assert not re.search(r"<(script|link)[^>]+(src|href)=", text)  # nothing fetched: Leaflet is inlined
    assert "L.imageOverlay" in text and "farslip-legend" in text
    shot = _screenshot(page, tmp_path / "map.png", tmp_path)
    # 60% class colour over the grey image (the polygons' 15% fill on top): red top half, blue bottom half
    red = 0.4 * 128 + 0.6 * PALETTE[0]
    blue = 0.4 * 128 + 0.6 * PALETTE[1]
    assert _share(shot, 0.85 * red + 0.15 * PALETTE[0]) > 0.15
    assert _share(shot, 0.85 * blue + 0.15 * PALETTE[1]) > 0.15
    # the image alone shows no class colours: what the screenshot showed were the overlays
    bare = webmap.write_html(tmp_path / "bare.html", image=image)
    shot = _screenshot(bare, tmp_path / "bare.png", tmp_path)
    assert _share(shot, (128, 128, 128), tol=12) > 0.3 and _share(shot, red) < 0.01


def test_view_rejects_what_it_cannot_show(tmp_path):
    with pytest.raises(webmap.ViewError, match="not found"):
        webmap.view([tmp_path / "missing.tif"])
    odd = _geotiff(tmp_path / "int.tif", np.zeros((1, 8, 8), np.int16))
    with pytest.raises(webmap.ViewError, match="neither a farslip class map"):
        webmap.view([odd], tmp_path / "x.html", image=odd)


def test_segment_writes_cogs_confidence_probabilities_polygons_and_map(tmp_path, tiny_parts):
    model, tokenizer = tiny_parts
    rng = np.random.default_rng(1)
    arr = rng.integers(1, 255, (3, 150, 170), dtype=np.uint8)
    arr[:, :64, :96] = 0  # with 64 px tiles, the first tile has no valid pixel at all
    declared = _geotiff(tmp_path / "scene.tif", arr, nodata=0)
    kw = dict(model=model, tokenizer=tokenizer, progress=False, block=64)
    classes = ["water", "forest", "building"]
    res = farslip.segment(declared, classes, out=tmp_path / "o", probabilities=True, vector="gpkg", html=True,
                          **kw)[0]
    for path in (res.geotiff, res.confidence, res.probabilities):
        assert cog.validate_cog(path) == [], path
    valid = (arr > 0).all(axis=0)
    with rasterio.open(res.geotiff) as a, rasterio.open(res.confidence) as c, rasterio.open(res.probabilities) as p:
        assert (a.crs.to_string(), a.transform) == (CRS, TRANSFORM) == (c.crs.to_string(), c.transform)
        cls, conf, probs = a.read(1), c.read(1), p.read()
        assert list(p.descriptions) == classes
    assert (cls[~valid] == 255).all() and set(np.unique(cls[valid])) <= {0, 1, 2}
    assert np.isnan(conf[~valid]).all() and np.isnan(probs[:, ~valid]).all()
    shown = np.take_along_axis(probs, np.minimum(cls, 2)[None].astype(int), 0)[0]
    assert np.allclose(conf[valid], shown[valid]) and np.allclose(probs[:, valid].sum(0), 1, atol=1e-5)
    assert (probs[:, valid].argmax(0) == cls[valid]).all()
    meta, _, geoms, cols = pyogrio.raw.read(res.vectors)
    burnt = rasterize(((g, v + 1) for g, v in zip(shapely.from_wkb(geoms), cols[meta["fields"].tolist().index(
        "class_index")])), out_shape=cls.shape, transform=TRANSFORM, dtype="int32")
    assert (burnt == np.where(cls == 255, 0, cls.astype(np.int32) + 1)).all()
    assert "L.imageOverlay" in (tmp_path / "o" / "scene.html").read_text()
    summary = json.loads((tmp_path / "o" / "scene.json").read_text())
    assert summary["vectors"] == res.vectors and summary["confidence"] == res.confidence
    # skipping the windows wholly in nodata changed no valid pixel's class
    plain = farslip.segment(_geotiff(tmp_path / "plain.tif", arr), classes, out=tmp_path / "p", **kw)[0]
    with rasterio.open(plain.geotiff) as b:
        assert (b.read(1)[valid] == cls[valid]).all()
    with pytest.raises(vectors.VectorError, match=".gpkg or .geojson"):
        farslip.segment(declared, classes, out=tmp_path / "o", vector="out.shp", **kw)


def test_cli_locate_and_view(tmp_path, tiny_model, capsys):
    from farslip.cli import main

    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    image = _geotiff(tmp_path / "scene.tif", np.random.default_rng(2).integers(1, 255, (3, 80, 90), dtype=np.uint8))
    out = tmp_path / "where"
    assert main(["locate", "storage tank", "ship", str(image), "--checkpoint", str(ckpt), "--out", str(out),
                 "--threshold", "0.3", "--vector-format", "geojson", "--html", "--no-progress",
                 "--background", "background"]) == 0
    printed = capsys.readouterr().out
    assert "'storage tank'" in printed and "regions" in printed
    for name in ("scene.storage-tank.tif", "scene.ship.tif", "scene.regions.geojson", "scene.locate.png",
                 "scene.locate.html"):
        assert (out / name).stat().st_size > 0, name
    # the command frees the text tower once the queries are embedded: the heatmaps equal the API's with the
    # whole model loaded from the same checkpoint
    from farslip.infer.common import load_for_inference

    whole, _, tokenizer = load_for_inference(checkpoint=ckpt, device="cpu")
    api = locate(["storage tank", "ship"], image, model=whole, tokenizer=tokenizer, out=tmp_path / "api",
                 threshold=0.3, vector_format="geojson", progress=False, background=["background"])[0]
    for q in api.queries:
        with rasterio.open(q.heatmap) as a, rasterio.open(out / Path(q.heatmap).name) as b:
            assert np.array_equal(a.read(), b.read(), equal_nan=True)
    assert main(["view", str(out / "scene.ship.tif"), str(out / "scene.regions.geojson"), "--out",
                 str(tmp_path / "ship.html")]) == 0
    assert "scene.tif" in (tmp_path / "ship.html").read_text()  # found the image from the heatmap's tag
    capsys.readouterr()
    assert main(["locate", "ship", "--checkpoint", str(ckpt)]) == 2  # no image: one line, no traceback
    assert "at least one query and one existing image" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "nothing.tif")]) == 2


def test_a_warped_image_has_no_black_wedges(tmp_path):
    """An image far from its UTM zone's central meridian is rotated in Web Mercator: what lies outside its
    footprint is transparent on the page (the map's grey shows), never black."""
    far_west = from_origin(170000, 6000000, 0.5, 0.5)  # about 3 degrees west of 15 E: a visibly rotated footprint
    with rasterio.open(tmp_path / "img.tif", "w", driver="GTiff", height=400, width=600, count=3, dtype="uint8",
                       crs=CRS, transform=far_west) as dst:
        dst.write(np.full((3, 400, 600), 128, np.uint8))
    grid = webmap.display_grid(rasterio.open(tmp_path / "img.tif"), 2048)
    rgba = webmap.image_layer(tmp_path / "img.tif", grid)
    assert (rgba[..., 3] == 0).mean() > 0.01  # the corners outside the rotated footprint
    assert (rgba[rgba[..., 3] == 255][:, :3] == 128).all()
    page = webmap.write_html(tmp_path / "map.html", image=tmp_path / "img.tif")
    assert "data:image/webp" in page.read_text()
    shot = _screenshot(page, tmp_path / "map.png", tmp_path)
    assert _share(shot, (128, 128, 128), tol=12) > 0.3
    assert _share(shot, (0, 0, 0), tol=30) < 0.001, "black wedges around the warped image"


def _scene_outputs(folder, factor):
    """The same scene at ``factor`` x its resolution: image, class map, confidence and polygons."""
    folder.mkdir()
    lab = np.kron(_blobs(128, 128), np.ones((factor, factor), np.uint8))
    t = from_origin(500000, 4600000, 4.0 / factor, 4.0 / factor)
    prof = dict(driver="GTiff", height=lab.shape[0], width=lab.shape[1], crs=CRS, transform=t)
    with rasterio.open(folder / "img.tif", "w", count=3, dtype="uint8", **prof) as dst:
        dst.write(np.stack([lab * 80 + 20, 200 - lab * 60, np.full_like(lab, 90)]))
    with rasterio.open(folder / "img.tif") as like:
        with cog.class_map_writer(folder / "cm.tif", like, ["red", "blue", "yellow"], PALETTE) as dst:
            dst.write(lab, 1)
        with cog.score_writer(folder / "conf.tif", like, ["confidence"], kind="confidence") as dst:
            dst.write((0.5 + lab / 6).astype(np.float32)[None])
    vectors.vectorize_class_map(folder / "cm.tif", folder / "cm.gpkg")
    return webmap.write_html(folder / "map.html", image=folder / "img.tif", rasters=[folder / "cm.tif",
                             folder / "conf.tif"], vectors=[folder / "cm.gpkg"], max_side=100).stat().st_size


def test_the_page_follows_max_side_not_the_scene(tmp_path):
    """A scene 8 x finer (64 x the pixels) makes the same page: every layer is drawn on the display grid, polygons
    simplified to it."""
    small, large = _scene_outputs(tmp_path / "small", 1), _scene_outputs(tmp_path / "large", 8)
    assert large < 1.25 * small, (small, large)


def test_a_large_picture_without_crs_fits_the_window(tmp_path):
    """Leaflet's simple CRS shows a pixel per screen pixel at zoom 0: a picture larger than the window must be
    allowed to zoom out to fit (the page's grey shows around it)."""
    from PIL import Image

    Image.fromarray(np.full((1000, 1200, 3), 128, np.uint8)).save(tmp_path / "photo.png")
    page = webmap.write_html(tmp_path / "photo.html", image=tmp_path / "photo.png")
    shot = _screenshot(page, tmp_path / "photo.shot.png", tmp_path)
    assert _share(shot, (128, 128, 128), tol=12) > 0.3
    assert _share(shot[:, :60], (128, 128, 128), tol=12) < 0.05  # a margin left of the picture: it fits
