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
from farslip.quickstart.analysis import seed_table
from farslip.quickstart.report import render_report


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


def _evaluated(pre: float, s1: float, s2: float, s1_abl: float, s2_abl: float, overlay: Path) -> dict:
    """Hand-made results of the five models in the shape ``run.evaluate_on_world`` returns; the pretrained
    model's OVSS overlay at ``overlay``."""
    def one(v, overlays=()):
        return {"dense": {"patch_acc": v, "crop_agreement": 0.9, "patches": 120}, "ovss": {"mIoU": v, "aAcc": 2 * v},
                "regions": {"top1": v}, "classification": {"top1": v, "top5": 2 * v},
                "classification_per_class": {"forest": {"correct": 1, "n": 3}, "river": {"correct": 2, "n": 3}},
                "retrieval": {"text2img_mean": v / 100, "img2text_mean": v / 200},
                "ovss_protocol": {"fit": 128, "window": 64, "stride": 32}, "overlays": list(overlays)}
    return {"pretrained (stand-in CLIP)": one(pre, [str(overlay)]),
            "stage 1 without distillation": one(s1_abl), "FarSLIP stage 1": one(s1),
            "stage 2 without region term": one(s2_abl), "FarSLIP stage 2": one(s2)}


def test_report_from_the_template(tmp_path):
    """render_report on hand-made results: every section, the tables' rows, the stages' changes and the
    distillation share with their known values, the overlays with a Markdown line break."""
    (tmp_path / "runs" / "stage1").mkdir(parents=True)
    (tmp_path / "runs" / "stage1" / "log.jsonl").write_text(
        json.dumps({"step": 1, "global_itc": 1.0, "distill": 0.02, "total": 1.002}) + "\n" +
        json.dumps({"step": 2, "global_itc": 1.0, "distill": 0.04, "total": 1.004}) + "\n")
    results = _evaluated(10, 20, 40, 15, 30, overlay=tmp_path / "overlays" / "model0" / "a.png")
    world = {"train_images": 48, "test_images": 24, "size": 64, "scenes": ["forest", "river"], "train_mixed": 20,
             "categories": {"ship": 0, "vehicle": 1}, "test_region_counts": {"ship": 3, "vehicle": 4}}
    schedules = {"pretrain": {"lr": 1e-3, "weight_decay": 0.1, "warmup": 0, "epochs": 1, "batch_size": 8, "steps": 2}}
    text = render_report(tmp_path, world=world, results=results, timings={"pretrain": 1.25}, total=3.0,
                         final=tmp_path / "final.pt", schedules=schedules, seed=7, maps=None,
                         retrieval={"caption": "a forest", "truth": "b.png", "top": ["a.png", "b.png"]}).read_text()
    assert text.startswith("# farslip quickstart report\n\n**The data are synthetic.**")
    for heading in ("## What each stage targets (held-out synthetic images, seed 7)", "## Image-level",
                    "## Training", "## Open-vocabulary segmentation", "## Retrieval example (stage-2 model)",
                    "## Timings (seconds)", "## The final model", "## The real recipes"):
        assert f"\n{heading}" in text
    assert "## Maps" not in text  # no maps were made
    assert "(48 training and 24 held-out images of\n64 px; scenes: forest, river)" in text
    assert "| FarSLIP stage 1 | 20.00 | 0.900 | 20.00 | 40.00 | 20.00 |" in text
    assert "| stage 2 without region term | 30.00 | 60.00 | 30.00 | 15.00 |" in text
    assert ("* stage 1 (dense alignment): dense patch accuracy 10 -> 20 (+10.00 points), the distillation term's "
            "share +5.00 points; crop agreement 0.9 -> 0.9 (+0.000), the term's share +0.000; OVSS mIoU 10 -> 20 "
            "(+10.00 points);\n* stage 2 (region-category alignment): region-category accuracy 20 -> 40 (+20.00 "
            "points), the region term's share +10.00 points;") in text
    assert "Stage 1's distillation loss (1 - cosine) averaged 0.0300 over its steps; weighted, it is 0.3% of" in text
    assert "of the 120 held-out patches" in text and "zero-shot over the 2 object categories" in text
    assert "{category}\") on 7 held-out object crops" in text
    assert "| river | 2/3 | 2/3 | 2/3 |" in text  # scene ZSC per class, stage 1 and both stage-2 runs
    assert "| pretrain | lr 0.001, wd 0.1, warmup 0, 1 epoch(s), batch 8: 2 steps | (OpenAI CLIP" in text
    assert ("![pretrained (stand-in CLIP)](overlays/model0/a.png)  \n*pretrained (stand-in CLIP): image | "
            "prediction | truth*\n") in text
    assert "top 2: `a.png`, `b.png`\n(found in the top 2)" in text
    assert "| pretrain | 1.2 |\n| total | 3.0 |" in text
    assert f"--img-dir {tmp_path}/world/ovss/img_dir/val --ann-dir" in text
    assert "--scale 128 --crop 64 --stride 32" in text
    assert "--set data.train=/data/MGRS-200k/text_info.json \\\n    --set model.pretrained=" in text


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
