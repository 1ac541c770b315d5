"""`farslip eval ...` end to end on the tiny registered architecture and the tiny benchmark copies (its usage
errors: tests/reliability/test_cli_errors.py; the Python API: test_evaluate_api.py)."""
from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import pytest

from farslip.cli import build_parser, main

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"
FAST_OVSS = ["--scale", "64", "--crop", "32", "--stride", "16"]
COMMON = ["--model", "FarSLIP-Tiny", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


def _report(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_eval_all_registered(bench_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "all", *COMMON, "--data-root", str(bench_root), "--output", str(out), *FAST_OVSS])
    assert rc == 0
    rep = _report(out)
    s = rep["sections"]
    assert (s["classification"]["evaluated"], s["retrieval"]["evaluated"], s["ovss"]["evaluated"]) == (8, 4, 8)
    assert set(s["classification"]["results"]["AID"]) == {"top1", "top5"}
    assert "text2img_R@100" in s["retrieval"]["results"]["SkyScript"]
    assert set(s["ovss"]["results"]["Potsdam"]["IoU"]) == {"road", "building", "low vegetation", "tree", "car",
                                                           "clutter"}
    assert rep["headline"]["zsc_mean_top1"] == s["classification"]["mean"]["top1"]
    for name in ("OpenEarthMap", "LoveDA", "iSAID", "Potsdam", "Vaihingen", "UAVid", "UDD5", "VDD"):
        assert len(list((out / "overlays" / name).glob("*.png"))) == 2
    md = (out / "results.md").read_text()
    assert "| mean (8/8) |" in md and "![iSAID](overlays/iSAID/" in md
    text = capsys.readouterr().out
    assert "NWPU-RESISC45" in text and "mean (4/4)" in text and "t2i R@1" in text


def test_missing_datasets_are_named_and_the_suite_goes_on(bench_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(bench_root, root)
    shutil.rmtree(root / "classification" / "fmow")
    shutil.rmtree(root / "ovss" / "VDD")
    first = sorted((root / "classification" / "aid" / "images").iterdir())[0]
    first.write_bytes(b"broken")
    out = tmp_path / "out"
    rc = main(["eval", "all", *COMMON, "--data-root", str(root), "--output", str(out), *FAST_OVSS,
               "--datasets", "fmow", "aid", "vdd", "loveda"])
    assert rc == 0
    s = _report(out)["sections"]
    assert "retrieval" not in s
    assert list(s["classification"]["results"]) == ["AID"]
    assert "fmow/fmow_img_txt_pairs_val.csv" in s["classification"]["missing"]["fMoW"]
    assert "VDD/test/src" in s["ovss"]["missing"]["VDD"]
    assert s["classification"]["info"]["AID"]["skipped"] == 1 and s["classification"]["skipped_records"] == 1
    text = capsys.readouterr().out
    assert "missing fMoW: expected" in text and "mean (1/2)" in text and "1 bad record(s) skipped" in text
    # nothing there at all -> exit code 2
    assert main(["eval", "ovss", *COMMON, "--data-root", str(tmp_path / "empty"), "--output", str(tmp_path / "o2"),
                 *FAST_OVSS]) == 2


def test_own_data_each_protocol(bench_root, tmp_path):
    cls = bench_root / "classification"
    rc = main(["eval", "classification", *COMMON, "--csv", str(cls / "aid" / "aid_img_txt_pairs_test.csv"),
               "--classnames", str(cls / "aid" / "classnames.txt"), "--images", str(cls), "--name", "mine",
               "--templates", "an aerial photo of {c}.", "--output", str(tmp_path / "c")])
    assert rc == 0 and set(_report(tmp_path / "c")["sections"]["classification"]["results"]["mine"]) == {"top1", "top5"}
    ret = bench_root / "retrieval"
    rc = main(["eval", "retrieval", *COMMON, "--csv", str(ret / "ucmcaptions" / "ucmcaptions_img_txt_pairs_test.csv"),
               "--images", str(ret), "--prefix", "a satellite image. ", "--output", str(tmp_path / "r")])
    assert rc == 0
    res = _report(tmp_path / "r")["sections"]["retrieval"]["results"]["ucmcaptions_img_txt_pairs_test"]
    assert 0 <= res["img2text_R@1"] <= 1
    ov = bench_root / "ovss" / "LoveDA"
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nbuilding,roof,house\nroad\nwater\nbarren\nforest\nagricultural\n")
    rc = main(["eval", "ovss", *COMMON, "--img-dir", str(ov / "img_dir" / "val"), "--ann-dir",
               str(ov / "ann_dir" / "val"), "--classes-file", str(classes), "--threshold", "0.3",
               "--reduce-zero-label", "--name", "loveda-own", "--overlays", "1", "--attn", "sclip",
               "--output", str(tmp_path / "o"), *FAST_OVSS])
    assert rc == 0
    rep = _report(tmp_path / "o")
    assert rep["sections"]["ovss"]["results"]["loveda-own"]["mIoU"] is not None
    assert rep["meta"]["ovss"]["attn"] == "sclip"
    assert len(list((tmp_path / "o" / "overlays" / "loveda-own").glob("*.png"))) == 1
    # no --name: named after the dataset folder, not the split; bf16 autocast (opt-in fast mode) is recorded
    rc = main(["eval", "ovss", *COMMON, "--img-dir", str(ov / "img_dir" / "val"), "--ann-dir",
               str(ov / "ann_dir" / "val"), "--classes-file", str(classes), "--reduce-zero-label", "--amp", "bf16",
               "--overlays", "0", "--output", str(tmp_path / "o2"), *FAST_OVSS])
    rep = _report(tmp_path / "o2")
    assert rc == 0 and rep["meta"]["amp"] == "bf16"
    assert rep["sections"]["ovss"]["results"]["LoveDA"]["mIoU"] is not None


@pytest.mark.parametrize("sub", ["classification", "retrieval", "ovss", "all"])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["eval", sub, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--data-root" in text and "--checkpoint" in text
