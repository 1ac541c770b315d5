"""``segment`` / ``locate`` with the SAM 3 protocols: a raster of any size in tiles, the map equal to SAM 3 run
once over the whole image (no seams), georeference and nodata kept, COG + confidence + vectors + HTML as with the
CLIP protocols, many inputs and resume, and the fusions (weight 0 = SAM 3 exactly)."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

import farslip
from farslip.cli import main
from farslip.engine import query_table, window_boxes
from farslip.engine.sam3 import FusionRule, sam3_runtime, synonym_max
from farslip.engine.scores import predict_classes
from farslip.models.sam3 import load_sam3, sam3_tokenizer
from support.sam3 import one_thread  # noqa: F401 (fixture)
from support.sam3 import lively_tiny_sam3

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["water,river", "forest,tree", "building,roof"]
SAM3 = dict(protocol="segearth-ov3", window=48, stride=32, progress=False)


@pytest.fixture(scope="module")
def sam3_ckpt(tmp_path_factory):
    """A tiny random SAM 3 whose maps vary, as the Hub's folder of transformers files."""
    folder = tmp_path_factory.mktemp("sam3") / "sam3"
    lively_tiny_sam3(seed=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 90 x 130 GeoTIFF (UTM) with a nodata corner."""
    y, x = np.mgrid[0:90, 0:130]
    arr = np.stack([x * 1.9, y * 2.7, (x * y) % 251 + 1]).astype(np.uint8)
    arr[:, 30:60, 40:90] = np.array([200, 60, 30], np.uint8)[:, None, None]
    arr = np.maximum(arr, 1)
    arr[:, :12, :20] = 0
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", height=90, width=130, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 0.5, 0.5), nodata=0) as dst:
        dst.write(arr)
    return path


def _whole_image_maps(sam3_ckpt, scene, names):
    model, _ = load_sam3(sam3_ckpt)
    with rasterio.open(scene) as f:
        image = torch.from_numpy(f.read())
    rt = sam3_runtime(model, sam3_tokenizer(), names, FusionRule(confidence=0.5))
    return rt.image_maps(image, window_boxes(90, 130, 48, 32))


def test_tiled_map_equals_one_pass_and_keeps_the_raster(tmp_path, sam3_ckpt, scene):
    run = farslip.segment(scene, CLASSES, checkpoint=sam3_ckpt, out=tmp_path / "out", block=40, vector="gpkg",
                          html=True, probabilities=True, **SAM3)
    res = run[0]
    names, owner = query_table([c.split(",") for c in CLASSES])
    scores = synonym_max(_whole_image_maps(sam3_ckpt, scene, names), owner, 3)
    want = predict_classes(scores, 0.0, 0).numpy()
    with rasterio.open(scene) as a, rasterio.open(res.geotiff) as b:
        assert (b.crs, b.transform, b.shape) == (a.crs, a.transform, a.shape)
        got = b.read(1)
    valid = np.ones((90, 130), bool)
    valid[:12, :20] = False
    assert (got[~valid] == 255).all()
    assert (got[valid] == want[valid]).all()
    assert len(np.unique(got[valid])) > 1
    with rasterio.open(res.probabilities) as p:
        probs = p.read()
    assert np.allclose(probs[:, valid], scores.numpy()[:, valid], atol=1e-5)
    assert np.isnan(probs[:, ~valid]).all()
    for output in (res.confidence, res.vectors, res.html, res.preview):
        assert output and (tmp_path / "out").joinpath(output.split("/")[-1]).is_file()
    assert sum(res.class_fractions.values()) == pytest.approx(1.0, abs=1e-3)


def test_many_inputs_and_resume(tmp_path, sam3_ckpt, scene):
    import shutil

    for name in ("a", "b"):
        shutil.copy(scene, tmp_path / f"{name}.tif")
    first = farslip.segment(str(tmp_path / "*.tif"), CLASSES, checkpoint=sam3_ckpt, out=tmp_path / "out", **SAM3)
    assert first.count("done") == 2
    again = farslip.segment(str(tmp_path / "*.tif"), CLASSES, checkpoint=sam3_ckpt, out=tmp_path / "out", **SAM3)
    assert again.count("complete") == 2
    other = farslip.segment(str(tmp_path / "*.tif"), CLASSES, checkpoint=sam3_ckpt, out=tmp_path / "out",
                            confidence_threshold=0.3, **SAM3)
    assert other.count("done") == 2  # another setting: redone


def test_locate_heatmap_is_the_query_map(tmp_path, sam3_ckpt, scene):
    run = farslip.locate(["water,river", "building"], scene, checkpoint=sam3_ckpt, out=tmp_path / "where",
                         threshold=0.2, **SAM3)
    names = ["water", "river", "building"]
    maps = _whole_image_maps(sam3_ckpt, scene, names)
    want = synonym_max(maps, torch.tensor([0, 0, 1]), 2).numpy()
    for i, q in enumerate(run[0].queries):
        with rasterio.open(q.heatmap) as f:
            heat = f.read(1)
        valid = ~np.isnan(heat)
        assert valid.sum() == 90 * 130 - 12 * 20
        assert np.allclose(heat[valid], want[i][valid], atol=1e-5)


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model, *_ = farslip.load_model("FarSLIP-Tiny")
    return farslip.save_model(model, tmp_path_factory.mktemp("clip") / "clip.pt")


FUSED = {**SAM3, "probabilities": True, "confidence_threshold": 0.05}


@pytest.fixture(scope="module")
def sam3_probabilities(one_thread, tmp_path_factory, sam3_ckpt, scene):
    res = farslip.segment(scene, CLASSES, checkpoint=sam3_ckpt, out=tmp_path_factory.mktemp("alone"), **FUSED)[0]
    with rasterio.open(res.probabilities) as f:
        return f.read()


@pytest.mark.parametrize("fusion", ["sam3-clip-rescore", "sam3-clip-fuse", "sam3-clip-presence"])
def test_fusions_at_weight_zero_are_sam3(tmp_path, sam3_ckpt, clip_ckpt, scene, sam3_probabilities, fusion):
    opts = {**FUSED, "protocol": fusion}
    zero = farslip.segment(scene, CLASSES, checkpoint=sam3_ckpt, clip_checkpoint=clip_ckpt, out=tmp_path / "zero",
                           clip_weight=0.0, **opts)[0]
    half = farslip.segment(scene, CLASSES, checkpoint=sam3_ckpt, clip_checkpoint=clip_ckpt, out=tmp_path / "half",
                           clip_weight=0.5, **opts)[0]
    read = lambda r: rasterio.open(r.probabilities).read()  # noqa: E731
    a, z, h = sam3_probabilities, read(zero), read(half)
    assert np.array_equal(np.nan_to_num(a, nan=-1), np.nan_to_num(z, nan=-1))
    assert not np.allclose(np.nan_to_num(a), np.nan_to_num(h))


def test_the_command(tmp_path, sam3_ckpt, scene, capsys):
    assert main(["segment", str(scene), "--protocol", "segearth-ov3", "--checkpoint", str(sam3_ckpt),
                 "--classes-file", "openearthmap", "--out", str(tmp_path / "maps"), "--window", "64",
                 "--no-progress"]) == 0
    assert (tmp_path / "maps" / "scene.tif").is_file() and "scene.tif" in capsys.readouterr().out
    assert main(["locate", "road", str(scene), "--protocol", "segearth-ov3", "--checkpoint", str(sam3_ckpt),
                 "--out", str(tmp_path / "where"), "--window", "64", "--no-progress"]) == 0
    assert (tmp_path / "where" / "scene.road.tif").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "segearth-ov3", "--attn", "sclip"], "--attn: CLIP option"),
    (["--protocol", "segearth-ov3", "--classes", "a " * 40, "b"], "tokens long"),
    (["--protocol", "sam3-clip-fuse"], "--clip-checkpoint"),
    (["--protocol", "segearth-ov3", "--clip-checkpoint", "x.pt"], "runs SAM 3 alone"),
    (["--confidence-threshold", "0.3"], "SAM 3 option"),
])
def test_refused_with_one_line_and_nothing_written(tmp_path, sam3_ckpt, scene, capsys, argv, message):
    args = ["segment", str(scene), "--checkpoint", str(sam3_ckpt), "--out", str(tmp_path / "maps"), "--no-progress"]
    if "--classes" not in argv:
        args += ["--classes", "road", "water"]
    assert main(args + argv) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("farslip: error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "maps").exists()


def test_torchrun_equals_one_process(tmp_path, sam3_ckpt, scene):
    import os
    import shutil
    import subprocess
    import sys

    for name in ("a", "b", "c"):
        shutil.copy(scene, tmp_path / f"{name}.tif")
    seg = ["segment", str(tmp_path / "*.tif"), "--protocol", "segearth-ov3", "--checkpoint", str(sam3_ckpt),
           "--classes", *CLASSES, "--window", "48", "--stride", "32", "--no-progress", "--device", "cpu"]
    assert main([*seg, "--out", str(tmp_path / "one")]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "farslip", *seg, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "segment: 3 input(s) on 2 process(es): 3 done" in proc.stdout
    for name in ("a", "b", "c"):
        with rasterio.open(tmp_path / "one" / f"{name}.tif") as a, rasterio.open(tmp_path / "two" / f"{name}.tif") as b:
            assert np.array_equal(a.read(1), b.read(1))


def test_a_loaded_sam3_model_segments_as_its_files(tmp_path, sam3_ckpt, scene):
    """The Python API with a loaded SAM 3 (model=) writes the map its checkpoint folder writes."""
    model, _ = load_sam3(sam3_ckpt)
    a = farslip.segment(scene, CLASSES, model=model, out=tmp_path / "a", **SAM3)[0]
    b = farslip.segment(scene, CLASSES, checkpoint=sam3_ckpt, out=tmp_path / "b", **SAM3)[0]
    with rasterio.open(a.geotiff) as x, rasterio.open(b.geotiff) as y:
        assert np.array_equal(x.read(1), y.read(1))
