"""segment / classify / search on generated rasters: georeference kept, nodata, bands, bit depths, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

import farslip
from farslip.infer.inputs import InputError
from farslip.infer import RasterError


@pytest.fixture
def model_ckpt(tmp_path, tiny_model):
    model, _, _ = tiny_model
    return farslip.save_model(model, tmp_path / "tiny.pt")


def _geotiff(path, arr, nodata=None, crs="EPSG:32633"):
    count, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=arr.dtype, crs=crs,
                       transform=from_origin(500000, 4600000, 0.5, 0.5), nodata=nodata) as dst:
        dst.write(arr)
    return path


def test_segment_keeps_georeference_and_nodata(tmp_path, model_ckpt):
    rng = np.random.default_rng(0)
    arr = rng.integers(1, 255, (3, 90, 130), dtype=np.uint8)
    arr[:, :10, :20] = 0  # nodata corner
    src = _geotiff(tmp_path / "scene.tif", arr, nodata=0)
    res = farslip.segment(src, ["water,river", "forest,tree", "building,roof"], checkpoint=model_ckpt,
                          out=tmp_path / "out", block=48, progress=False)[0]
    with rasterio.open(src) as a, rasterio.open(res.geotiff) as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
        pred = b.read(1)
        assert json.loads(b.tags()["CLASS_NAMES"]) == ["water", "forest", "building"]
        assert b.nodata == 255 and b.colormap(1)[0][:3] != (0, 0, 0)
    assert (pred[:10, :20] == 255).all()
    assert set(np.unique(pred[10:, 20:])) <= {0, 1, 2}
    assert (tmp_path / "out" / "scene.png").stat().st_size > 0
    assert sum(res.class_fractions.values()) == pytest.approx(1.0, abs=1e-3)


def test_multiband_16bit_and_float_inputs(tmp_path, model_ckpt):
    rng = np.random.default_rng(2)
    s2 = rng.integers(0, 10000, (5, 40, 50), dtype=np.uint16)
    res = farslip.segment(_geotiff(tmp_path / "s2.tif", s2), ["water", "land"], checkpoint=model_ckpt,
                          out=tmp_path / "o", bands=[4, 3, 2], progress=False)[0]
    assert rasterio.open(res.geotiff).shape == (40, 50)
    f = rng.random((1, 40, 50)).astype(np.float32)
    res = farslip.segment(_geotiff(tmp_path / "f.tif", f), ["water", "land"], checkpoint=model_ckpt,
                          out=tmp_path / "o", progress=False)[0]
    assert rasterio.open(res.geotiff).shape == (40, 50)
    with pytest.raises(RasterError, match="has 5 band"):
        farslip.segment(tmp_path / "s2.tif", ["a", "b"], checkpoint=model_ckpt, out=tmp_path / "o", bands=[6, 3, 2])


def test_png_input_and_clear_errors(tmp_path, model_ckpt):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    res = farslip.segment(tmp_path / "a.png", ["x", "y"], checkpoint=model_ckpt, out=tmp_path / "o", progress=False)
    assert rasterio.open(res[0].geotiff).shape == (40, 40)
    with pytest.raises(InputError, match="nope.tif: no such file"):  # the many-input expansion names it first
        farslip.segment(tmp_path / "nope.tif", ["x", "y"], checkpoint=model_ckpt, out=tmp_path / "o")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RasterError, match="not a raster"):
        farslip.segment(tmp_path / "notes.txt", ["x", "y"], checkpoint=model_ckpt, out=tmp_path / "o")
    with pytest.raises(ValueError, match="no classes"):
        farslip.segment(tmp_path / "a.png", [], checkpoint=model_ckpt, out=tmp_path / "o")


def test_classify_and_search(tmp_path, model_ckpt):
    folder = tmp_path / "tiles"
    folder.mkdir()
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}
    for name, c in colours.items():
        Image.fromarray(np.full((48, 48, 3), c, np.uint8)).save(folder / f"{name}.png")
    preds = farslip.classify(sorted(folder.glob("*.png")), ["harbor,port", "forest", "desert"], checkpoint=model_ckpt,
                             top_k=2, progress=False)
    assert len(preds) == 3 and all(len(p.top) == 2 for p in preds)
    assert all(abs(sum(s for _, s in p.top) - 1) < 1 + 1e-6 for p in preds)

    first = farslip.search.index(folder, checkpoint=model_ckpt, progress=False)
    assert (first["images"], first["embedded"]) == (3, 3)
    again = farslip.search.index(folder, checkpoint=model_ckpt, progress=False)
    assert (again["embedded"], again["reused"]) == (0, 3)  # incremental: nothing recomputed
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(folder / "grey.png")
    assert farslip.search.index(folder, checkpoint=model_ckpt, progress=False)["embedded"] == 1
    hits = farslip.search.query(folder / "red.png", index=folder, checkpoint=model_ckpt, top=2)
    assert hits[0].path.endswith("red.png") and hits[0].score == pytest.approx(1.0, abs=1e-4)
    text_hits = farslip.search.query("a red square", index=folder, checkpoint=model_ckpt, top=4)
    assert len(text_hits) == 4
    sheet = farslip.search.contact_sheet(text_hits, tmp_path / "sheet.png", "a red square")
    assert sheet.stat().st_size > 0


def test_cli_segment_and_classify(tmp_path, model_ckpt, capsys):
    from farslip.cli import main

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--checkpoint", str(model_ckpt), "--classes", "road",
                 "building,roof", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert (tmp_path / "o" / "a.tif").exists()
    assert main(["classify", str(tmp_path / "a.png"), "--checkpoint", str(model_ckpt), "--classes", "x", "y",
                 "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
    assert "| a.png |" in capsys.readouterr().out
    assert (tmp_path / "p.csv").read_text().startswith("image,class_1,prob_1")


def test_areas_are_in_the_crs_units_and_pixel_counts_read_well():
    from rasterio.crs import CRS

    from farslip.infer.runner import format_pixels
    from farslip.infer.vectors import area_unit

    assert area_unit(CRS.from_epsg(32633)) == "m^2" and area_unit(CRS.from_epsg(4326)) == "deg^2"
    assert area_unit(None) == "px^2" and area_unit(CRS.from_epsg(2263)).endswith("foot^2")
    assert format_pixels(1920) == "1,920 px" and format_pixels(16_777_216) == "16.8 Mpx"


def test_locate_reports_areas_in_square_metres_and_progress_in_pixels(tmp_path, tiny_model, capsys):
    from support.hostile import write_geotiff

    model, _, tokenizer = tiny_model
    scene = write_geotiff(tmp_path / "s.tif", np.random.default_rng(3).integers(0, 255, (3, 40, 48), np.uint8))
    farslip.locate(["ship"], scene, model=model, tokenizer=tokenizer, out=tmp_path / "o", threshold=0.01,
                   background=["water"])
    captured = capsys.readouterr()
    assert " m^2," in captured.out and "1,920 px" in captured.out
    assert "1.92k/1.92k" in captured.err and "px" in captured.err  # the tiles' bar counts pixels, not tiles
