"""The quickstart end to end at a reduced size: every stage runs and the report has its tables and pictures."""
from __future__ import annotations

import json

import rasterio
import numpy as np
from rasterio.transform import from_origin

import farslip
from farslip.quickstart import run_quickstart


def test_quickstart_tiny(tmp_path):
    report = run_quickstart(tmp_path / "qs", size="tiny")
    text = report.read_text()
    assert "The data are synthetic" in text
    for model in ("pretrained (stand-in CLIP)", "FarSLIP stage 1", "FarSLIP stage 2"):
        assert f"| {model} |" in text
    for picture in ("loss_curves.png", "retrieval_example.png"):
        assert (tmp_path / "qs" / picture).stat().st_size > 0 and picture in text
    assert list((tmp_path / "qs" / "overlays").glob("**/*.png"))
    # the maps of the georeferenced scene: COGs, polygons, the offline maps, and their pictures in the report
    maps = tmp_path / "qs" / "maps"
    for name in ("scene.tif", "scene.confidence.tif", "scene.gpkg", "scene.html", "scene.storage-tank.tif",
                 "scene.regions.gpkg", "scene.locate.html"):
        assert (maps / name).stat().st_size > 0, name
    assert "![segment](maps/scene.png)" in text and "![locate](maps/scene.locate.png)" in text
    with rasterio.open(maps / "scene.tif") as a, rasterio.open(tmp_path / "qs" / "world" / "scene" / "scene.tif") as b:
        assert (a.crs, a.transform) == (b.crs, b.transform) and b.crs.to_epsg() == 32633
    results = json.loads((tmp_path / "qs" / "results.json").read_text())["results"]
    assert 0 <= results["FarSLIP stage 2"]["classification"]["top1"] <= 100

    # The final model is self-describing: segment a georeferenced GeoTIFF with no other model argument.
    final = tmp_path / "qs" / "farslip-tiny-stage2.pt"
    model, *_ = farslip.load_model(checkpoint=final)
    assert model.context_length == 248
    src = tmp_path / "scene.tif"
    with rasterio.open(src, "w", driver="GTiff", height=50, width=60, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(10, 50, 1e-4, 1e-4)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 50, 60), dtype=np.uint8))
    res = farslip.segment(src, ["water", "forest", "building"], checkpoint=final, out=tmp_path / "seg",
                          progress=False)[0]
    with rasterio.open(res.geotiff) as out, rasterio.open(src) as inp:
        assert (out.crs, out.transform, out.shape) == (inp.crs, inp.transform, inp.shape)
