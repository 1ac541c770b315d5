"""Several runs' results.json in one table per task, the paper's numbers beside them, every mean with its count of
sets; the ablation recipe evaluated and printed as the ablation tables."""
from __future__ import annotations

import copy
import json
import runpy
from pathlib import Path

import pytest
import torch

import farslip
from farslip.eval import EvalOptions, ablation_tables, evaluate, format_tables, results_tables

from support.fixtures import REPO
from support.hostile import assert_user_error, run_cli

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"
QUIET = EvalOptions(workers=0, progress=False, protocol_overrides={"scale": 64, "crop": 32, "stride": 16}, overlays=0)
DATASETS = ["aid", "eurosat", "rsicd", "loveda"]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("table_bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


def _checkpoint(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model, *_ = farslip.load_model("FarSLIP-Tiny")
    folder.mkdir(parents=True, exist_ok=True)
    return farslip.save_model(model, folder / "final.pt")


@pytest.fixture(scope="module")
def run_a(bench_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    evaluate("all", _checkpoint(out / "stage1", 0), data_root=bench_root, datasets=DATASETS, output=out / "eval",
             options=QUIET, log=lambda _: None)
    return out / "eval"


def test_headline_says_how_many_sets_its_means_are_over(run_a):
    head = json.loads((run_a / "results.json").read_text())["headline"]
    assert (head["ovss_sets"], head["zsc_sets"], head["retrieval_sets"]) == ("1 of 8", "2 of 8", "1 of 4")
    assert "ovss_sets" in (run_a / "results.md").read_text()


def test_one_table_per_task_with_the_papers_numbers(run_a):
    named = json.loads((run_a / "results.json").read_text())
    named["meta"]["checkpoint"] = "farslip2-vit-b-16"     # as if it were the released model's results
    named["meta"]["published"] = farslip.eval.published_numbers("farslip2-vit-b-16")
    tables = {t.task: t for t in results_tables([run_a, named], labels=["mine", "released"])}
    assert list(tables) == ["classification", "retrieval", "ovss"]
    ovss = tables["ovss"]
    assert ovss.columns == ["OpenEarthMap", "LoveDA", "Potsdam", "Vaihingen", "UDD5", "VDD", "UAVid", "iSAID"]
    cells = {row[0]: row for row in ovss.cells()}
    assert cells["paper: farslip2-vit-b-16"][1:3] == ["34.39", "34.23"] and cells["paper: farslip2-vit-b-16"][-1] \
        == "35.41 (8/8)"
    assert cells["mine"][1] == "-" and cells["mine"][-1].endswith("(1/8)")
    assert "protocol farslip" in ovss.protocol
    assert any("mine" in n and "not comparable" in n for n in ovss.notes)   # the fast windows changed the protocol
    retrieval = tables["retrieval"]
    assert retrieval.columns[:2] == ["RSICD i2t", "RSICD t2i"] and "UCM-captions t2i" in retrieval.columns
    paper = {row[0]: row for row in retrieval.cells()}["paper: farslip2-vit-b-16"]
    assert paper[1:3] == ["27.40", "23.70"] and paper[-1] == "-"             # the paper gives no retrieval mean
    zsc = {row[0]: row for row in tables["classification"].cells()}
    assert zsc["paper: farslip2-vit-b-16"][-1] == "62.24 (8/8)" and zsc["mine"][-1].endswith("(2/8)")
    text = format_tables(list(tables.values()))
    assert "Zero-shot scene classification, top-1 (%)" in text and "mean (sets)" in text


def test_detail_tables_and_the_command(run_a, tmp_path, capsys):
    detail = [t for t in results_tables([run_a], detail=True) if "/" in t.task]
    assert [t.task for t in detail] == ["classification/AID", "classification/EuroSAT", "retrieval/RSICD",
                                        "ovss/LoveDA"]
    out = run_cli(capsys, "eval", "table", f"a={run_a}", f"b={run_a / 'results.json'}", "--paper",
                  "openai-vit-b-16", "--markdown", "--json", tmp_path / "t.json")
    assert out.code == 0 and "| paper: openai-vit-b-16 |" in out.out and "| a |" in out.out and "| b |" in out.out
    assert {t["task"] for t in json.loads((tmp_path / "t.json").read_text())} == {"classification", "retrieval",
                                                                                  "ovss"}
    assert_user_error(run_cli(capsys, "eval", "table", tmp_path / "nowhere"), "nowhere", "no results.json")
    assert_user_error(run_cli(capsys, "eval", "table", run_a, "--paper", "mars-clip"), "mars-clip")


def test_the_ablation_recipe_is_evaluated_once_and_printed(bench_root, tmp_path, capsys):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    for name, base in (("ours", "stage1_vitb16_rs5m.yaml"), ("cls", "ablations/stage1_roi2cls.yaml"),
                       ("untrained", "ablations/stage1_combined.yaml")):
        (recipe_dir / f"{name}.yaml").write_text(f"base: {REPO / 'configs' / base}\nrun:\n  out: {tmp_path / name}\n")
    _checkpoint(tmp_path / "ours", 0)
    _checkpoint(tmp_path / "cls", 1)
    (recipe_dir / "table.yaml").write_text(
        "tables:\n  - title: distillation\n    rows:\n"
        "      - {label: patch-to-patch, config: ours.yaml, paper: true}\n"
        "      - {label: patch-to-CLS, config: cls.yaml}\n"
        "      - {label: combined, config: untrained.yaml}\n")
    logged = []
    tables = ablation_tables(recipe_dir / "table.yaml", data_root=bench_root, datasets=DATASETS, options=QUIET,
                             log=logged.append)
    assert sum("evaluating" in line for line in logged) == 2 and (tmp_path / "ours" / "eval-all" / "results.json").is_file()
    table = tables[0]
    assert table.header() == ["variant", "OVSS mIoU", "ZSC top-1", "retrieval mR"]
    rows = {row[0]: row for row in table.cells()}
    assert rows["patch-to-patch *"][1].endswith("(1/8)") and rows["patch-to-patch *"][2].endswith("(2/8)")
    assert rows["patch-to-patch *"][3].endswith("(1/4)") and rows["combined"][1:] == ["-", "-", "-"]
    assert any("combined: not trained" in n for n in table.notes)
    again = []
    ablation_tables(recipe_dir / "table.yaml", data_root=bench_root, datasets=DATASETS, options=QUIET,
                    log=again.append)
    assert again == []  # kept results are reused
    out = run_cli(capsys, "eval", "ablations", recipe_dir / "table.yaml", "--no-evaluate")
    assert out.code == 0 and "patch-to-CLS" in out.out and "(2/8)" in out.out
    assert_user_error(run_cli(capsys, "eval", "ablations", recipe_dir / "table.yaml"), "--data-root")
