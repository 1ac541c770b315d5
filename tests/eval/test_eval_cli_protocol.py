"""`farslip eval ovss|all --protocol`: the protocol and every value it ran with, printed and in results.json;
overrides for registered datasets; the farslip protocol is the default."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from farslip.cli import build_parser, main

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"
COMMON = ["--model", "FarSLIP-Tiny", "--workers", "0", "--no-progress", "--overlays", "0"]
FAST = ["--scale", "64", "--crop", "32", "--stride", "16"]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol_bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


def _report(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_default_is_the_farslip_protocol(bench_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["eval", "ovss", *COMMON, "--data-root", str(bench_root), "--datasets", "potsdam", "udd5",
                 "--output", str(out), *FAST]) == 0
    rep = _report(out)
    meta = rep["meta"]["ovss"]
    assert (meta["name"], meta["cls_lambda"], meta["threshold"], meta["window_to_model_size"]) == \
        ("farslip", 0.0, 0.0, True)
    assert meta["overridden"] == ["crop", "scale", "stride"] and "RS-OVSS" in meta["source"]
    info = rep["sections"]["ovss"]["info"]
    assert info["Potsdam"]["protocol"]["threshold"] == 0.0     # not the config's 0.1
    text = capsys.readouterr().out
    assert "protocol farslip" in text and "no threshold" in text and "overridden: crop, scale, stride" in text
    assert "protocol farslip" in (out / "results.md").read_text()


def test_segearth_protocol_and_overrides_for_registered_datasets(bench_root, tmp_path):
    out = tmp_path / "se"
    assert main(["eval", "ovss", *COMMON, "--data-root", str(bench_root), "--datasets", "potsdam", "udd5",
                 "--protocol", "segearth", "--output", str(out), *FAST]) == 0
    info = _report(out)["sections"]["ovss"]["info"]
    assert (info["Potsdam"]["protocol"]["threshold"], info["Potsdam"]["protocol"]["background_index"]) == (0.1, 5)
    assert (info["UDD5"]["protocol"]["threshold"], info["UDD5"]["protocol"]["background_index"]) == (0.4, 4)
    assert info["UDD5"]["protocol"]["cls_lambda"] == -0.3
    out2 = tmp_path / "se2"
    assert main(["eval", "all", *COMMON, "--data-root", str(bench_root), "--datasets", "udd5", "--protocol",
                 "segearth", "--threshold", "0.25", "--cls-lambda", "-0.1", "--window-resize", "on",
                 "--output", str(out2), *FAST]) == 0
    rep = _report(out2)
    p = rep["sections"]["ovss"]["info"]["UDD5"]["protocol"]
    assert (p["threshold"], p["background_index"], p["cls_lambda"], p["window_to_model_size"]) == (0.25, 4, -0.1,
                                                                                                  True)
    assert rep["meta"]["ovss"]["overridden"] == ["cls_lambda", "crop", "scale", "stride", "threshold",
                                                 "window_to_model_size"]


def test_protocol_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "all", "--help"])
    text = capsys.readouterr().out
    assert "--protocol {farslip,segearth,segearth-ov3," in text and "--simfeatup FILE" in text and "--rs-ovss-method" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "ovss", "--protocol", "paper"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "ovss", "--threshold", "high"])
    assert "expected a number or 'dataset'" in capsys.readouterr().err


def test_a_missing_simfeatup_file_is_one_line(bench_root, tmp_path, capsys):
    rc = main(["eval", "ovss", *COMMON, "--data-root", str(bench_root), "--datasets", "udd5", "--protocol",
               "segearth", "--simfeatup", str(tmp_path / "absent.ckpt"), "--output", str(tmp_path / "o"), *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert "absent.ckpt" in err and "no such file" in err and "Traceback" not in err
