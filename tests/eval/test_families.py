"""Evaluation and the map commands with every tower family (tests/support/towers.py), from a checkpoint file as a
user has one: classification, retrieval and OVSS under both CLIP protocols (farslip = RS-OVSS, segearth =
SegEarth-OV), segment (both protocols), locate, classify and search."""
from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

import farslip
from farslip.eval import EvalOptions, evaluate

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"
FAMILIES = ("vit-l14", "siglip2", "pe-core")  # the CLS ViT-B shape is every other test's
DATASETS = ["aid", "rsicd", "loveda", "potsdam"]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


@pytest.fixture(scope="module", params=FAMILIES)
def family_checkpoint(request, tmp_path_factory, tiny_towers):
    torch.manual_seed(0)
    model = farslip.load_model(tiny_towers[request.param])[0]
    return request.param, farslip.save_model(model, tmp_path_factory.mktemp(request.param) / "model.pt")


@pytest.mark.parametrize("protocol", ["farslip", "segearth"])
def test_evaluation_runs_with_every_family(bench_root, family_checkpoint, tmp_path, protocol):
    checkpoint = family_checkpoint[1]
    options = EvalOptions(workers=0, progress=False, overlays=0, protocol=protocol,
                          protocol_overrides={"scale": 64, "crop": 32, "stride": 16})
    suite = "all" if protocol == "farslip" else "ovss"
    run = evaluate(suite, checkpoint, data_root=bench_root, datasets=DATASETS if suite == "all" else DATASETS[2:],
                   output=tmp_path / "eval", options=options, log=lambda line: None)
    assert run.status == 0 and run.failed == 0
    sections = run.report["sections"]
    assert set(sections) == ({"classification", "retrieval", "ovss"} if suite == "all" else {"ovss"})
    ovss = sections["ovss"]["results"]
    assert set(ovss) == {"LoveDA", "Potsdam"} and all(0 <= r["mIoU"] <= 100 for r in ovss.values())
    assert run.report["meta"]["ovss"]["name"] == protocol
    for section in sections.values():
        assert all(not math.isnan(v) for v in _numbers(section["results"]))


def _numbers(results: dict):
    for r in results.values():
        for v in r.values():
            if isinstance(v, (int, float)):
                yield v


def _geotiff(path, arr):
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=arr.shape[0],
                       dtype=arr.dtype, crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5)) as dst:
        dst.write(arr)
    return path


def test_map_commands_run_with_every_family(family_checkpoint, tmp_path):
    """segment (from the checkpoint file, under the family's turn of the two protocols -- OVSS above runs both for
    every family), then locate, classify and search with the model loaded once."""
    rng = np.random.default_rng(0)
    scene = _geotiff(tmp_path / "scene.tif", rng.integers(1, 255, (3, 70, 90), dtype=np.uint8))
    family, checkpoint = family_checkpoint
    protocol = {"vit-l14": "farslip", "siglip2": "segearth", "pe-core": "farslip"}[family]
    res = farslip.segment(scene, ["water,river", "forest", "building,roof"], checkpoint=checkpoint,
                          out=tmp_path / "seg", protocol=protocol, block=48, progress=False, log=None)[0]
    with rasterio.open(res.geotiff) as ds:
        assert ds.shape == (70, 90) and set(np.unique(ds.read(1))) <= {0, 1, 2}
    model, _, preprocess, tok = farslip.load_model(checkpoint=str(checkpoint))
    found = farslip.locate(["road", "pond"], scene, model=model, tokenizer=tok, out=tmp_path / "locate", log=None)
    assert found.line() and len(found) == 1
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for name, colour in {"red": (220, 20, 20), "blue": (20, 20, 220)}.items():
        Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).save(tiles / f"{name}.png")
    preds = farslip.classify(sorted(tiles.glob("*.png")), ["harbor", "forest"], model=model, preprocess=preprocess,
                             tokenizer=tok, top_k=2, progress=False, log=None)
    assert len(preds) == 2 and all(len(p.top) == 2 for p in preds)
    assert farslip.search.index(tiles, model=model, preprocess=preprocess, progress=False)["embedded"] == 2
    hits = farslip.search.query(tiles / "red.png", index=tiles, model=model, preprocess=preprocess, tokenizer=tok,
                                top=2)
    assert hits[0].path.endswith("red.png") and hits[0].score == pytest.approx(1.0, abs=1e-4)
