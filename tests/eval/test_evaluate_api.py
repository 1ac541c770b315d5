"""`farslip.eval.evaluate`: the run `farslip eval` makes, from Python -- the same results.json numbers as the
command, own data as small dataclasses, a loaded model, every mistake refused before a model is loaded, and the
process group joined only when torchrun started one that nobody joined."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

import farslip
from farslip.cli import main
from farslip.core.errors import UsageError
from farslip.eval import ClassificationData, EvalOptions, OVSSData, RetrievalData, evaluate

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"
FAST = {"scale": 64, "crop": 32, "stride": 16}
FAST_ARGS = ["--scale", "64", "--crop", "32", "--stride", "16"]
QUIET = EvalOptions(workers=0, progress=False, protocol_overrides=FAST, overlays=1)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model, *_ = farslip.load_model("FarSLIP-Tiny")
    return farslip.save_model(model, tmp_path_factory.mktemp("api_ckpt") / "tiny.pt")


def _numbers(report: dict) -> dict:
    """What a run measured, without its timings and dates."""
    return {kind: {k: s[k] for k in ("results", "mean", "missing", "failed", "evaluated", "expected")}
            for kind, s in report["sections"].items()}


def test_the_api_and_the_command_write_the_same_numbers(bench_root, ckpt, tmp_path, capsys):
    names = ["aid", "eurosat", "rsicd", "loveda", "potsdam"]
    assert main(["eval", "all", "--checkpoint", str(ckpt), "--data-root", str(bench_root), "--datasets", *names,
                 "--workers", "0", "--no-progress", "--overlays", "1", "--output", str(tmp_path / "cli"),
                 *FAST_ARGS]) == 0
    lines = []
    run = evaluate("all", ckpt, data_root=bench_root, datasets=names, output=tmp_path / "api", options=QUIET,
                   log=lines.append)
    assert run.status == 0 and (run.evaluated, run.failed) == (5, 0)
    assert run.paths == {"json": tmp_path / "api" / "results.json", "markdown": tmp_path / "api" / "results.md"}
    cli, api = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("cli", "api"))
    assert _numbers(api) == _numbers(cli) and api["headline"] == cli["headline"]
    assert set(api["sections"]) == {"classification", "retrieval", "ovss"}
    assert _numbers(api) == json.loads(json.dumps(_numbers(run.report)))  # the returned report is the file's
    for key in ("checkpoint", "model", "device", "precision", "amp", "processes", "ovss"):
        assert api["meta"][key] == cli["meta"][key], key
    assert api["meta"]["ovss"]["overridden"] == ["crop", "scale", "stride"]
    assert any(line.startswith("[ovss] LoveDA: done in") for line in lines)
    assert len(list((tmp_path / "api" / "overlays" / "Potsdam").glob("*.png"))) == 1


def test_own_data_of_each_suite(bench_root, ckpt, tmp_path):
    cls, ret, ov = bench_root / "classification", bench_root / "retrieval", bench_root / "ovss" / "LoveDA"
    run = evaluate("classification", ckpt, own=ClassificationData(
        cls / "aid" / "aid_img_txt_pairs_test.csv", cls / "aid" / "classnames.txt", images=cls,
        templates=["an aerial photo of {c}."], name="mine"), output=tmp_path / "c", options=QUIET)
    assert run.status == 0 and set(run.report["sections"]["classification"]["results"]["mine"]) == {"top1", "top5"}
    run = evaluate("retrieval", ckpt, own=RetrievalData(ret / "ucmcaptions" / "ucmcaptions_img_txt_pairs_test.csv",
                                                        images=ret, prefix="a satellite image. "),
                   output=tmp_path / "r", options=QUIET)
    assert list(run.report["sections"]["retrieval"]["results"]) == ["ucmcaptions_img_txt_pairs_test"]
    own = OVSSData(ov / "img_dir" / "val", ov / "ann_dir" / "val", "loveda", reduce_zero_label=True)
    run = evaluate("ovss", ckpt, own=own, output=tmp_path / "o",
                   options=EvalOptions(workers=0, progress=False, protocol="segearth", overlays=0,
                                       protocol_overrides={**FAST, "threshold": 0.3}))
    section = run.report["sections"]["ovss"]
    assert list(section["results"]) == ["LoveDA"]  # named after the dataset folder, not the split
    assert (section["protocol"]["name"], section["protocol"]["threshold"]) == ("segearth", 0.3)
    # the command line's own data gives the same numbers
    assert main(["eval", "ovss", "--checkpoint", str(ckpt), "--img-dir", str(own.img_dir), "--ann-dir",
                 str(own.ann_dir), "--classes-file", "loveda", "--reduce-zero-label", "--protocol", "segearth",
                 "--threshold", "0.3", "--overlays", "0", "--workers", "0", "--no-progress", "--output",
                 str(tmp_path / "o-cli"), *FAST_ARGS]) == 0
    cli = json.loads((tmp_path / "o-cli" / "results.json").read_text())
    assert _numbers(cli) == json.loads(json.dumps(_numbers(run.report)))


def test_a_loaded_model_is_evaluated_as_it_is(bench_root, ckpt, tmp_path):
    model, _, preprocess, tokenizer = farslip.load_model(checkpoint=ckpt)
    run = evaluate("classification", "my-model", data_root=bench_root, datasets=["aid"], model=model,
                   preprocess=preprocess, tokenizer=tokenizer, output=tmp_path / "m", options=QUIET)
    by_file = evaluate("classification", ckpt, data_root=bench_root, datasets=["aid"], output=tmp_path / "f",
                       options=QUIET)
    assert _numbers(run.report) == _numbers(by_file.report)
    assert run.report["meta"]["checkpoint"] == "my-model" and run.report["meta"]["precision"] == "as given"
    with pytest.raises(UsageError, match="preprocess and tokenizer"):
        evaluate("classification", data_root=bench_root, model=model)


def test_exit_status_of_a_run(bench_root, ckpt, tmp_path):
    """1 when a dataset failed, 2 when none was evaluated: the command's exit statuses."""
    broken = tmp_path / "broken.csv"
    broken.write_text("not,the,columns\n1,2,3\n")
    run = evaluate("classification", ckpt, own=ClassificationData(broken, bench_root / "classification" / "aid" /
                                                                  "classnames.txt"), output=tmp_path / "b",
                   options=QUIET)
    assert (run.evaluated, run.failed, run.status) == (0, 1, 2)
    run = evaluate("retrieval", ckpt, data_root=tmp_path / "empty", output=tmp_path / "e", options=QUIET)
    assert run.status == 2 and "RSICD" in run.report["sections"]["retrieval"]["missing"]
    # a top folder given alone: the suites under the others are reported missing, not a crash
    run = evaluate("all", ckpt, roots={"classification": bench_root / "classification"}, datasets=["aid", "rsicd"],
                   output=tmp_path / "roots", options=QUIET)
    sections = run.report["sections"]
    assert list(sections["classification"]["results"]) == ["AID"]
    assert sections["retrieval"]["missing"]["RSICD"] == "expected --data-root or --root retrieval=DIR"
    assert run.status == 0


@pytest.mark.parametrize("kwargs, says", [
    (dict(suite="detection", data_root="d"), "unknown suite"),
    (dict(suite="ovss", own=ClassificationData("a.csv", "n.txt")), "own data for classification"),
    (dict(suite="classification", own=ClassificationData(None, "n.txt")), "also needs --csv"),
    (dict(suite="retrieval", own=RetrievalData("a.csv"), roots={"retrieval": "r"}), "not both"),
    (dict(suite="ovss", data_root="d", roots={"sar": "x"}), "unknown kind 'sar'"),
    (dict(suite="all", data_root="d", datasets=["aid", "mars"]), "mars"),
    (dict(suite="ovss", data_root="d", options=EvalOptions(protocol="paper")), "unknown OVSS protocol"),
    (dict(suite="all", data_root="d", options=EvalOptions(protocol_overrides={"windows": 3})), "windows"),
    (dict(suite="ovss", data_root="d", options=EvalOptions(protocol_overrides={"attn": "x"})), "attn"),
    (dict(suite="classification", data_root="d", options=EvalOptions(amp="fp8")), "--amp fp8"),
    (dict(suite="retrieval", data_root="d", options=EvalOptions(ties="random")), "--ties random"),
    (dict(suite="retrieval", data_root="d", options=EvalOptions(on_error="ignore")), "--on-error ignore"),
])
def test_mistakes_are_usage_errors_before_anything_loads(monkeypatch, kwargs, says):
    import farslip.eval.evaluation as evaluation

    def no_loading(*args, **kw):
        raise AssertionError("loaded before the options were checked")

    monkeypatch.setattr(evaluation, "_load", no_loading)
    kwargs = {"checkpoint": "tiny.pt", **kwargs}
    with pytest.raises(UsageError) as exc:
        evaluate(kwargs.pop("suite"), **kwargs)
    assert says in str(exc.value)
    with pytest.raises(UsageError, match="give --checkpoint and/or --model"):
        evaluate("ovss", data_root="d")


def test_log_has_the_dataset_lines_and_a_warning_for_random_weights(bench_root, tmp_path):
    lines = []
    evaluate("classification", arch="FarSLIP-Tiny", data_root=bench_root, datasets=["aid"], output=tmp_path / "w",
             options=QUIET, log=lines.append)
    assert lines[0].startswith("warning: no checkpoint") and lines[-1].startswith("[classification] AID: done")


def test_the_process_group_is_joined_only_when_launched_and_not_yet_joined(bench_root, ckpt, tmp_path,
                                                                           monkeypatch):
    import torch.distributed as dist

    from farslip.core import distributed

    calls = []
    monkeypatch.setattr(distributed, "join", lambda device: calls.append(("join", device)) or distributed.Dist())
    monkeypatch.setattr(distributed, "leave", lambda: calls.append(("leave",)))
    args = dict(data_root=bench_root, datasets=["aid"], options=QUIET)
    evaluate("classification", ckpt, output=tmp_path / "a", **args)
    assert calls == []  # not launched: the one-process path
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = evaluate("classification", ckpt, output=tmp_path / "b", **args)
    assert calls == [("join", "auto"), ("leave",)] and run.report["meta"]["device"] == "cpu"
    calls.clear()
    with pytest.raises(UsageError):  # a mistake is found before the group is joined
        evaluate("classification", ckpt, data_root=bench_root, datasets=["mars"])
    assert calls == []
    # a caller that joined the group itself keeps it: evaluate neither joins nor leaves
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        evaluate("classification", ckpt, output=tmp_path / "c", **args)
        assert calls == [] and dist.is_initialized()
    finally:
        dist.destroy_process_group()
