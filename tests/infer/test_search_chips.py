"""search inside large rasters: chips with their map footprints, incremental, georeferenced GeoJSON hits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from farslip.engine import window_spans
from farslip.infer import search

TRANSFORM = from_origin(500000, 4600000, 2.0, 2.0)


def _scene(path, nodata_rows=0):
    rng = np.random.default_rng(3)
    arr = rng.integers(1, 255, (3, 150, 200), dtype=np.uint8)
    arr[:, :nodata_rows] = 0
    with rasterio.open(path, "w", driver="GTiff", height=150, width=200, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=TRANSFORM, nodata=0 if nodata_rows else None) as dst:
        dst.write(arr)
    return arr


def test_chip_index_query_and_footprints(tmp_path, tiny_model):
    model, preprocess, tokenizer = tiny_model
    arr = _scene(tmp_path / "scene.tif", nodata_rows=64)
    kw = dict(model=model, preprocess=preprocess, progress=False, chip=32, stride=16)
    first = search.index(tmp_path / "scene.tif", **kw)
    rows, cols = window_spans(150, 32, 16), window_spans(200, 32, 16)
    with_data = [r for r in rows if r[1] > 64]  # chips wholly in the nodata rows are not indexed
    assert first["items"] == len(with_data) * len(cols) and first["embedded"] == first["items"]
    assert (tmp_path / "scene.tif.farslip-index" / "index.json").exists()
    again = search.index(tmp_path / "scene.tif", **kw)
    assert (again["embedded"], again["reused"]) == (0, first["items"])
    # a chip found by its own picture, with its footprint in the raster's CRS
    x0, y0 = cols[3][0], with_data[2][0]
    Image.fromarray(arr[:, y0:y0 + 32, x0:x0 + 32].transpose(1, 2, 0)).save(tmp_path / "q.png")
    hits = search.query(tmp_path / "q.png", index=tmp_path / "scene.tif", model=model, preprocess=preprocess,
                        tokenizer=tokenizer, top=3)
    assert hits[0].window == (x0, y0, 32, 32) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    e0, n0 = TRANSFORM @ (x0, y0)
    assert hits[0].footprint[0] == [e0, n0] and hits[0].footprint[2] == [e0 + 64, n0 - 64]
    gj = json.loads(search.write_geojson(hits, tmp_path / "hits.geojson").read_text())
    f = gj["features"][0]
    assert f["properties"]["rank"] == 1 and f["properties"]["window"] == [x0, y0, 32, 32]
    back = transform_geom("EPSG:4326", "EPSG:32633", f["geometry"])["coordinates"][0]
    assert np.allclose(back[0], [e0, n0], atol=0.01) and np.allclose(back[2], [e0 + 64, n0 - 64], atol=0.01)
    assert search.contact_sheet(hits, tmp_path / "sheet.png", "chip").stat().st_size > 0


def test_changed_raster_is_embedded_again(tmp_path, tiny_model):
    model, preprocess, _ = tiny_model
    _scene(tmp_path / "scene.tif")
    kw = dict(model=model, preprocess=preprocess, progress=False, chip=64)
    n = search.index(tmp_path / "scene.tif", **kw)["items"]
    _scene(tmp_path / "scene.tif", nodata_rows=100)  # rewritten: new mtime, fewer chips with data
    again = search.index(tmp_path / "scene.tif", **kw)
    assert again["reused"] == 0 and 0 < again["items"] < n
    with pytest.raises(ValueError, match="too small"):
        search.index(tmp_path / "scene.tif", model=model, preprocess=preprocess, chip=4)
