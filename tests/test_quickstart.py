"""The quickstart end to end at a reduced size: every stage runs and the report has its tables and pictures."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import farslip
from farslip.quickstart import run_quickstart, run_seeds


def test_quickstart_tiny(tmp_path):
    report = run_quickstart(tmp_path / "qs", size="tiny")
    text = report.read_text()
    assert "The data are synthetic" in text
    for model in ("pretrained (stand-in CLIP)", "stage 1 without distillation", "FarSLIP stage 1",
                  "stage 2 without region term", "FarSLIP stage 2"):
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


def _fake_results(pre: float, s1: float, s2: float, s1_abl: float | None = None, s2_abl: float | None = None) -> dict:
    def one(v):
        return {"dense": {"patch_acc": v, "crop_agreement": v / 100}, "ovss": {"mIoU": v},
                "regions": {"top1": v}, "classification": {"top1": v},
                "retrieval": {"text2img_mean": v / 100, "img2text_mean": v / 100}}
    runs = {"pretrained (stand-in CLIP)": one(pre), "FarSLIP stage 1": one(s1), "FarSLIP stage 2": one(s2)}
    if s1_abl is not None:
        runs["stage 1 without distillation"], runs["stage 2 without region term"] = one(s1_abl), one(s2_abl)
    return runs


def test_seed_table_mean_spread_and_stage_changes():
    from farslip.quickstart import seed_table

    table = seed_table({0: _fake_results(10, 20, 40, 15, 30), 1: _fake_results(12, 18, 44, 17, 40),
                        2: _fake_results(14, 22, 42, 16, 41)})
    header = [c.strip() for c in table.splitlines()[0].split("|")[1:-1]]
    assert header[1:6] == ["pretrained (stand-in CLIP)", "stage 1 without distillation", "FarSLIP stage 1",
                           "stage 2 without region term", "FarSLIP stage 2"]  # each stage beside its ablation
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    # pretrained 10/12/14 -> mean 12, sample sd 2; stage 1 - pretrained per seed: +10, +6, +8
    assert rows["dense patch acc. %"][:5] == ["12.00 ± 2.00", "16.00 ± 1.00", "20.00 ± 2.00", "37.00 ± 6.08",
                                              "42.00 ± 2.00"]
    assert rows["dense patch acc. %"][5] == "stage 1: +8.00 (+10.00, +6.00, +8.00)"
    # the distillation term's share: stage 1 - stage 1 without it: +5, +1, +6
    assert rows["dense patch acc. %"][6] == "stage 1: +4.00 (+5.00, +1.00, +6.00)"
    # stage-2 rows compare stage 2 with stage 1 (+20, +26, +20) and with stage 2 without its region term
    assert rows["region-category acc. %"][5:] == ["stage 2: +22.00 (+20.00, +26.00, +20.00)",
                                                  "stage 2: +5.00 (+10.00, +4.00, +1.00)"]
    assert rows["crop agreement"][0] == "0.120 ± 0.020"
    assert rows["text->image mean R %"][0] == "12.00 ± 2.00"  # retrieval is stored as a fraction
    # runs recorded without the ablations still tabulate (their columns stay empty)
    old = seed_table({0: _fake_results(10, 20, 40), 1: _fake_results(12, 18, 44)})
    assert "stage 1: +8.00 (+10.00, +6.00)" in old


@pytest.mark.slow
@pytest.mark.timeout(6000)
def test_quickstart_three_seeds(tmp_path):
    """The evidence table of docs/quickstart.md: the full quickstart for seeds 0, 1, 2, each metric's mean and
    spread. Writes to $FARSLIP_SEEDS_OUT when set (to keep the runs), else a temporary folder."""
    out = Path(os.environ.get("FARSLIP_SEEDS_OUT") or tmp_path)
    table = run_seeds(out, seeds=(0, 1, 2)).read_text()
    runs = json.loads((out / "seeds.json").read_text())["results"]
    assert sorted(runs) == ["0", "1", "2"]
    for label in ("dense patch acc. %", "crop agreement", "OVSS mIoU %", "region-category acc. %", "ZSC top-1 %"):
        assert f"| {label} |" in table
    for seed in runs.values():
        for model in seed.values():
            assert 0 <= model["regions"]["top1"] <= 100 and 0 <= model["dense"]["patch_acc"] <= 100
            assert -1 <= model["dense"]["crop_agreement"] <= 1 and 0 <= model["ovss"]["mIoU"] <= 100
