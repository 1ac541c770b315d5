"""Outputs never touch inputs: every writing command refuses (exit 2, one line) an output that is one of its
inputs, gives inputs that share a stem distinct outputs, and writes under a temporary name renamed when complete."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.hostile import assert_user_error, digest, run_cli, snapshot, write_geotiff


def _segment(capsys, *args):
    return run_cli(capsys, "segment", *args, "--classes", "water", "land", "--no-progress")


def _no_partials(folder):
    left = [p.name for p in folder.rglob(".*") if "partial" in p.name or "stage" in p.name]
    assert not left, left


def test_segment_into_the_input_folder_is_refused(capsys, tmp_path, scene, tiny_ckpt):
    before = snapshot(scene.parent)
    line = assert_user_error(_segment(capsys, scene, "--checkpoint", tiny_ckpt, "--out", scene.parent), "scene.tif")
    assert "input" in line and "--out" in line
    assert snapshot(scene.parent) == before


def test_segment_preview_would_replace_a_png_input(capsys, tmp_path, tiny_ckpt):
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    before = digest(img)
    assert_user_error(_segment(capsys, img, "--checkpoint", tiny_ckpt, "--out", tmp_path), "photo.png")
    assert digest(img) == before


def test_segment_out_that_is_a_file_is_refused(capsys, tmp_path, scene, tiny_ckpt):
    target = tmp_path / "maps.txt"
    target.write_text("keep me")
    assert_user_error(_segment(capsys, scene, "--checkpoint", tiny_ckpt, "--out", target), "maps.txt")
    assert target.read_text() == "keep me"


def test_segment_inputs_sharing_a_stem(capsys, tmp_path, tiny_ckpt):
    """Inputs sharing a file name (Sentinel-2's TCI.tif in per-date folders) get distinct, predictable names, from
    the command and from the Python API alike."""
    import farslip
    import rasterio

    rng = np.random.default_rng(2)
    a = write_geotiff((tmp_path / "a").mkdir() or tmp_path / "a" / "x.tif", rng.integers(0, 255, (3, 24, 24),
                                                                                          dtype=np.uint8))
    b = write_geotiff((tmp_path / "b").mkdir() or tmp_path / "b" / "x.tif", rng.integers(0, 255, (3, 32, 28),
                                                                                          dtype=np.uint8))
    for out in (tmp_path / "cli", tmp_path / "api"):
        if out.name == "cli":
            assert _segment(capsys, a, b, "--checkpoint", tiny_ckpt, "--out", out).code == 0
        else:
            res = farslip.segment([a, b], ["water", "land"], checkpoint=tiny_ckpt, out=out, progress=False)
            assert res[1].geotiff == str(out / "b_x.tif")
        with rasterio.open(out / "a_x.tif") as ra, rasterio.open(out / "b_x.tif") as rb:
            assert ra.shape == (24, 24) and rb.shape == (32, 28)
        assert json.loads((out / "a_x.json").read_text())["image"] == str(a)
        assert not (out / "x.tif").exists()
        _no_partials(out)


def test_segment_same_stem_different_suffix(tmp_path, tiny_ckpt):
    import farslip

    rng = np.random.default_rng(3)
    png = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(png)
    tif = write_geotiff(tmp_path / "x.tif", rng.integers(0, 255, (3, 24, 24), dtype=np.uint8))
    res = farslip.segment([png, tif], ["a", "b"], checkpoint=tiny_ckpt, out=tmp_path / "o", progress=False)
    assert [os.path.basename(r.geotiff) for r in res] == ["x_png.tif", "x_tif.tif"]


def test_segment_rerun_replaces_its_own_outputs_atomically(tmp_path, scene, tiny_ckpt):
    import farslip

    out = tmp_path / "o"
    first = farslip.segment(scene, ["a", "b"], checkpoint=tiny_ckpt, out=out, progress=False)[0]
    again = farslip.segment(scene, ["a", "b"], checkpoint=tiny_ckpt, out=out, progress=False, redo=True)[0]
    assert first.geotiff == again.geotiff and os.path.exists(again.geotiff)
    _no_partials(out)


def test_truncated_tif_midway_leaves_no_map(capsys, tmp_path, tiny_ckpt):
    import rasterio

    arr = np.random.default_rng(4).integers(0, 255, (3, 256, 256), dtype=np.uint8)
    good = tmp_path / "good.tif"
    with rasterio.open(good, "w", driver="GTiff", height=256, width=256, count=3, dtype="uint8",
                       compress="deflate", tiled=True, blockxsize=64, blockysize=64) as dst:
        dst.write(arr)
    cut = tmp_path / "in" / "cut.tif"
    cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    out = tmp_path / "o"
    capsys.readouterr()
    assert_user_error(_segment(capsys, cut, "--checkpoint", tiny_ckpt, "--out", out, "--block", "32"), "cut.tif")
    assert not (out / "cut.tif").exists()
    _no_partials(out) if out.exists() else None


def test_truncated_png_is_refused(capsys, tmp_path, tiny_ckpt):
    img = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    img.write_bytes(img.read_bytes()[:400])
    line = assert_user_error(_segment(capsys, img, "--checkpoint", tiny_ckpt, "--out", tmp_path / "o"), "cut.png")
    assert "truncated" in line


def test_a_missing_image_among_many_stops_before_any_work(capsys, tmp_path, scene, tiny_ckpt):
    out = tmp_path / "o"
    assert_user_error(_segment(capsys, scene, tmp_path / "typo.tif", "--checkpoint", tiny_ckpt, "--out", out),
                      "typo.tif")
    assert not (out / "scene.tif").exists()


# ---------------------------------------------------------------------------------------------------- classify

def _images(tmp_path, n=2):
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def _classify(capsys, *args):
    return run_cli(capsys, "classify", *args, "--classes", "forest", "harbor", "--no-progress")


def test_classify_out_over_an_input_image_is_refused(capsys, tmp_path, tiny_ckpt):
    imgs = _images(tmp_path)
    before = digest(imgs[1])
    imgs[1].rename(tmp_path / "img1.csv")  # an input that happens to be named like the output
    imgs[1] = tmp_path / "img1.csv"
    assert_user_error(_classify(capsys, *imgs, "--checkpoint", tiny_ckpt, "--out", imgs[1]), "img1.csv", "input")
    assert digest(imgs[1]) == before


def test_classify_out_named_like_an_image_is_refused(capsys, tmp_path, tiny_ckpt):
    imgs = _images(tmp_path)
    before = digest(imgs[0])
    assert_user_error(_classify(capsys, *imgs, "--checkpoint", tiny_ckpt, "--out", imgs[0]), ".csv or .json")
    assert digest(imgs[0]) == before


def test_classify_skips_an_unreadable_image_and_reports_it(capsys, tmp_path, tiny_ckpt):
    imgs = _images(tmp_path)
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    res = _classify(capsys, imgs[0], bad, imgs[1], "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.csv")
    assert res.code == 1, res.err  # some input failed: counted and named, the others classified
    assert "bad.jpg" in res.out + res.err and "Traceback" not in res.err
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 3 and not any("bad.jpg" in r for r in rows)
    _no_partials(tmp_path)


def test_classify_top_k_zero(capsys, tmp_path, tiny_ckpt):
    assert_user_error(_classify(capsys, *_images(tmp_path), "--checkpoint", tiny_ckpt, "--top-k", "0"), "--top-k")


# ---------------------------------------------------------------------------------------------------- model

def test_model_convert_onto_itself_is_refused(capsys, tmp_path, tiny_ckpt):
    before = digest(tiny_ckpt)
    assert_user_error(run_cli(capsys, "model", "convert", tiny_ckpt, tiny_ckpt), "input")
    link = tmp_path / "alias.pt"
    os.link(tiny_ckpt, link) if os.stat(tiny_ckpt).st_dev == os.stat(tmp_path).st_dev else link.symlink_to(tiny_ckpt)
    assert_user_error(run_cli(capsys, "model", "convert", tiny_ckpt, link), "input")
    assert digest(tiny_ckpt) == before


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_model_convert_writes_a_new_file(capsys, tmp_path, tiny_ckpt, suffix):
    res = run_cli(capsys, "model", "convert", tiny_ckpt, tmp_path / f"copy{suffix}")
    assert res.code == 0, res.err
    _no_partials(tmp_path)


# ---------------------------------------------------------------------------------------------------- data

@pytest.fixture
def mgrs_json(tmp_path):
    from support.fixtures import load_maker

    return load_maker("mgrs_quirky")(tmp_path / "mgrs")


def test_validate_report_over_the_json_is_refused(capsys, mgrs_json):
    before = digest(mgrs_json)
    res = run_cli(capsys, "data", "validate", mgrs_json, "--no-images", "--report", mgrs_json)
    assert_user_error(res, str(mgrs_json))
    assert digest(mgrs_json) == before


def test_stats_outputs_over_the_json_are_refused(capsys, mgrs_json):
    before = digest(mgrs_json)
    assert_user_error(run_cli(capsys, "data", "stats", mgrs_json, "--json", mgrs_json), str(mgrs_json))
    assert_user_error(run_cli(capsys, "data", "stats", mgrs_json, "--png", mgrs_json), str(mgrs_json))
    assert digest(mgrs_json) == before


def test_caption_out_must_be_json(capsys, mgrs_json, tmp_path):
    res = run_cli(capsys, "data", "caption", mgrs_json, "--out", tmp_path / "captions.jpg")
    assert res.code == 2 and ".json" in res.err and "Traceback" not in res.err


def _dota(tmp_path):
    from support.fixtures import load_maker

    return load_maker("dota")(tmp_path / "dota")


@pytest.mark.parametrize("where", ["images", "inside-images", "global_imgs"])
def test_build_out_over_its_inputs_is_refused(capsys, tmp_path, where):
    root = Path(_dota(tmp_path))
    images, labels = root / "images", root / "labelTxt"
    if where == "global_imgs":  # --images that is an earlier build's chips folder, --out that build
        out = root / "built"
        shutil.copytree(images, out / "global_imgs")
        images = out / "global_imgs"
    else:
        out = images if where == "images" else images / "mgrs"
    before = snapshot(root)
    res = run_cli(capsys, "data", "build", "--format", "dota", "--images", images, "--labels", labels,
                  "--out", out, "--overwrite", "--no-progress")
    assert res.code == 2 and "choose an --out" in res.err and "Traceback" not in res.err, res.err
    assert snapshot(root) == before


# ---------------------------------------------------------------------------------------------------- eval

def test_eval_output_over_its_inputs_is_refused(capsys, tmp_path):
    d = tmp_path / "bench"
    (d / "overlays").mkdir(parents=True)
    (d / "ann").mkdir()
    (d / "classes.txt").write_text("road\nbuilding\n")
    res = run_cli(capsys, "eval", "ovss", "--model", "Test-Tiny-ViT", "--img-dir", d / "overlays", "--ann-dir",
                  d / "ann", "--classes-file", d / "classes.txt", "--output", d, "--no-progress")
    assert_user_error(res, "overlays", "--img-dir")
    (d / "results.json").write_text("filepath,label\n")
    (d / "names.txt").write_text("a\nb\n")
    res = run_cli(capsys, "eval", "classification", "--model", "Test-Tiny-ViT", "--csv", d / "results.json",
                  "--classnames", d / "names.txt", "--output", d, "--no-progress")
    assert_user_error(res, "results.json", "input")
    assert (d / "results.json").read_text() == "filepath,label\n"


# ---------------------------------------------------------------------------------------------------- one input's
# outputs are finished together: none of a failed run, none of another run's settings left to look current

def _stem_files(out, stem="scene"):
    return sorted(p.name for p in out.glob(f"{stem}.*"))


def test_a_rerun_with_other_settings_leaves_no_stale_outputs(tmp_path, scene, tiny_ckpt):
    import farslip

    out = tmp_path / "o"
    farslip.segment(scene, ["water", "land"], checkpoint=tiny_ckpt, out=out, progress=False, vector="gpkg",
                    html=True, probabilities=True)
    assert {"scene.gpkg", "scene.html", "scene.probabilities.tif"} <= set(_stem_files(out))
    again = farslip.segment(scene, ["road", "tree", "roof"], checkpoint=tiny_ckpt, out=out, progress=False)[0]
    assert _stem_files(out) == ["scene.confidence.tif", "scene.json", "scene.png", "scene.tif"]
    assert again.vectors is None and again.html is None
    farslip.locate(["ship", "tank"], scene, checkpoint=tiny_ckpt, out=tmp_path / "w", progress=False)
    farslip.locate(["ship"], scene, checkpoint=tiny_ckpt, out=tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "scene.tank.tif").exists() and (tmp_path / "w" / "scene.ship.tif").exists()
    # segment and locate into one folder: neither takes the other's outputs for stale ones of its own
    farslip.locate(["ship"], scene, checkpoint=tiny_ckpt, out=out, progress=False)
    assert {"scene.tif", "scene.confidence.tif", "scene.ship.tif"} <= set(_stem_files(out))
    rerun = farslip.segment(scene, ["road", "tree", "roof"], checkpoint=tiny_ckpt, out=out, progress=False)
    assert rerun.line().count("1 already complete") == 1 and (out / "scene.ship.tif").exists()


@pytest.mark.parametrize("phase", ["preview", "polygons", "web map"])
def test_a_failure_in_any_output_phase_leaves_no_output_and_keeps_the_earlier_ones(tmp_path, scene, tiny_ckpt,
                                                                                   monkeypatch, phase):
    import farslip
    from farslip.infer import segmentation, webmap

    out = tmp_path / "o"
    kw = dict(checkpoint=tiny_ckpt, out=out, progress=False, vector="gpkg", html=True)
    farslip.segment(scene, ["water", "land"], **kw)
    earlier = {p.name: digest(p) for p in out.glob("scene.*")}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")  # the disk filled up in this phase

    target = {"preview": (segmentation, "write_preview"), "polygons": (segmentation, "vectorize_class_map"),
              "web map": (webmap, "write_html")}[phase]
    monkeypatch.setattr(*target, broken)
    with pytest.raises(OSError):
        farslip.segment(scene, ["road", "tree"], redo=True, **kw)  # other classes: every file would change
    assert {p.name: digest(p) for p in out.glob("scene.*")} == earlier
    _no_partials(out)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        farslip.segment(scene, ["road", "tree"], **{**kw, "out": fresh})
    assert not list(fresh.glob("scene.*"))
    _no_partials(fresh)


def _mislabelled(path):
    """A GeoTIFF that says EPSG:4326 (degrees) while its coordinates are UTM metres (Cologne, as OpenEarthMap's)."""
    import rasterio
    from rasterio.transform import from_origin

    arr = np.random.default_rng(7).integers(1, 255, (3, 32, 32), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=32, width=32, count=3, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(356000, 5648000, 0.5, 0.5)) as dst:
        dst.write(arr)
    return path


@pytest.mark.parametrize("extra", [[], ["--html", "--vector", "gpkg"]])
def test_a_georeference_that_contradicts_its_crs_is_one_line_and_nothing_is_written(capsys, tmp_path, tiny_ckpt,
                                                                                      extra):
    bad = _mislabelled(tmp_path / "cologne.tif")
    out = tmp_path / "o"
    line = assert_user_error(_segment(capsys, bad, "--checkpoint", tiny_ckpt, "--out", out, *extra), "cologne.tif",
                             "EPSG:4326", "5648000")
    assert "latitude" in line
    assert not list(out.glob("cologne.*")) if out.exists() else True
    _no_partials(out) if out.exists() else None


def test_view_of_a_raster_with_a_contradicting_georeference(capsys, tmp_path):
    bad = _mislabelled(tmp_path / "cologne.tif")
    assert_user_error(run_cli(capsys, "view", bad, "--out", tmp_path / "m.html"), "cologne.tif", "5648000")
    assert not (tmp_path / "m.html").exists()


def test_a_picture_without_crs_is_said_once_without_warnings(capsys, tmp_path, tiny_ckpt):
    import warnings

    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(8).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = _segment(capsys, img, "--checkpoint", tiny_ckpt, "--out", tmp_path / "o", "--vector", "geojson",
                       "--html")
    assert res.code == 0, res.err
    assert (res.out + res.err).count("no CRS") == 1
    assert not [w for w in seen if "georeferenc" in str(w.message).lower() or "crs" in str(w.message).lower()]
