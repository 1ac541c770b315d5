"""Elastic resume end to end: a run goes on after losing (or gaining) processes -- 1 -> 2 under torchrun (gloo), then
2 -> 1 -- and every record of each epoch is still met once. Records with no caption make that visible: each is
reported in skipped.jsonl when its own index comes up, so an epoch whose every index was drawn once reports each
of them once. (The loader-level deal is tested in test_elastic_data.py.)"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from farslip.train import load_config, train

from support.fixtures import REPO, torchrun_train

RECIPE = REPO / "configs" / "vanilla_vitb16_rs5m.yaml"


def _half_bad_csv(folder: Path) -> Path:
    """16 rows; the odd ones have an empty caption."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'' if i % 2 else f'field number {i}'}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def _over(tmp_path: Path) -> dict:
    return {"model": {"arch": "FarSLIP-Tiny", "pretrained": None},
            "data": {"kind": "csv", "train": str(_half_bad_csv(tmp_path / "data")), "views": "none", "workers": 0},
            "optim": {"batch_size": 2, "epochs": 2, "warmup": 2, "lr": 1e-4, "precision": "fp32"},
            "run": {"out": str(tmp_path / "run"), "tensorboard": False, "progress": False, "save_every": 1000}}


def _torchrun(over: dict, *extra: str):
    return torchrun_train(RECIPE, over, *extra)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_one_to_two_to_one_process_meets_every_record_once_per_epoch(tmp_path, capsys):
    over = _over(tmp_path)
    run = Path(over["run"]["out"])
    # 1 process: 8 steps per epoch of 2 samples; pause after 3 (6 samples of epoch 0 trained on)
    over["run"]["stop_after"] = 3
    train(load_config(RECIPE, over))
    # 2 processes: the 10 left of epoch 0 make 2 steps of 2 x 2 (2 samples fall in the dropped tail); then epoch 1
    # has 4 steps; pause after 2 of them
    over["run"]["stop_after"] = 7
    proc = _torchrun(over, "--resume", "auto")
    assert "elastic resume" in proc.stdout + proc.stderr
    # 1 process again: the 8 left of epoch 1 make 4 steps
    over["run"]["stop_after"] = None
    result = train(load_config(RECIPE, over), resume="auto")
    assert "processes: 2 -> 1" in capsys.readouterr().out

    log = _lines(run / "log.jsonl")
    assert [e["step"] for e in log] == list(range(1, 12)) and result["steps"] == 11
    epoch_of = {e["step"]: e["epoch"] for e in log}
    assert [epoch_of[s] for s in range(1, 12)] == [0] * 5 + [1] * 6
    reported = Counter((epoch_of[r["step"]], r["record"]) for r in _lines(run / "skipped.jsonl"))
    assert max(reported.values()) == 1                                   # no record met twice in an epoch
    epoch1 = {record for epoch, record in reported if epoch == 1}
    assert epoch1 == {f"row {i + 2}" for i in range(1, 16, 2)}          # all 8 bad rows of epoch 1, once each
    assert len([1 for epoch, _ in reported if epoch == 0]) >= 8 - 2     # epoch 0: all but its dropped tail
    assert [r["processes"] for r in _lines(run / "resumes.jsonl")] == [[1, 2], [2, 1]]
