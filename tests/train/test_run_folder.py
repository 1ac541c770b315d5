"""A run owns its folder: no second run writes into it, resume continues only the run recorded there."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from farslip.train import load_config, train
from farslip.train.checkpoint import list_checkpoints
from farslip.train.rundir import RunStartError

from support.fixtures import REPO, tiny_overrides

RECIPE = REPO / "configs" / "stage2_vitb16_mgrs.yaml"


def _config(tmp_path: Path, steps: int, out: Path | None = None, **run):
    over = tiny_overrides(tmp_path, 2, steps=steps)
    over["run"].update(save_every=1, **run)
    if out is not None:
        over["run"]["out"] = str(out)
    return load_config(RECIPE, over)


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]


def _run_id(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["run_id"]


def test_a_fresh_start_refuses_a_folder_with_another_run(tmp_path, tiny_arch):
    cfg = _config(tmp_path, 2)
    run = Path(cfg.run.out)
    train(cfg)
    before = {p.name: p.read_bytes() for p in (run / "log.jsonl", run / "final.pt", run / "run.json")}
    with pytest.raises(RunStartError, match=r"holds run .* \(checkpoints up to step 2\).*--resume auto.*--overwrite"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in (run / "log.jsonl", run / "final.pt", run / "run.json")} == before
    # A folder with only a user's own files is free.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    train(_config(tmp_path, 1, out=other))
    assert (other / "notes.txt").read_text() == "mine" and _steps(other) == [1]


def test_overwrite_replaces_the_old_run_entirely(tmp_path, tiny_arch):
    cfg = _config(tmp_path, 3)
    run = Path(cfg.run.out)
    train(cfg)
    old_id = _run_id(run)
    cfg.run.stop_after = 1
    train(cfg, overwrite=True)
    assert _steps(run) == [1]  # nothing appended to the old log
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001.pt"]  # the old run's are gone ...
    assert _run_id(run) != old_id
    cfg.run.stop_after = 2
    train(cfg, resume="auto")  # ... so resume continues the new run, not the old run's step 3
    assert _steps(run) == [1, 2]
    with pytest.raises(RunStartError, match="give one of them"):
        train(cfg, resume="auto", overwrite=True)


def test_resume_continues_only_the_run_recorded_in_the_folder(tmp_path, tiny_arch):
    a = _config(tmp_path / "a", 3, stop_after=2)
    b = _config(tmp_path / "b", 5, stop_after=4)
    train(a)
    train(b)
    run_a, run_b = Path(a.run.out), Path(b.run.out)
    payload = torch.load(list_checkpoints(run_a)[-1], weights_only=True)
    assert payload["run_id"] == _run_id(run_a) != _run_id(run_b)
    # A newer checkpoint of run b copied into a's folder is passed over.
    shutil.copy(list_checkpoints(run_b)[-1], run_a / "checkpoints")
    a.run.stop_after = None
    train(a, resume="auto")
    assert _steps(run_a) == [1, 2, 3]
    # An explicit checkpoint of another run is refused for this folder ...
    with pytest.raises(RunStartError, match="is a checkpoint of run .* but .* holds run"):
        train(a, resume=str(list_checkpoints(run_b)[-1]))
    # ... and continues that run in an empty folder.
    c = _config(tmp_path / "b", 5, out=tmp_path / "c" / "run")  # run b's data, another folder
    train(c, resume=str(run_b / "checkpoints" / "step_00000004.pt"))
    assert _steps(Path(c.run.out)) == [5] and _run_id(Path(c.run.out)) == _run_id(run_b)


def test_when_every_checkpoint_is_corrupt_the_run_starts_again_with_a_new_log(tmp_path, tiny_arch):
    cfg = _config(tmp_path, 3)
    run = Path(cfg.run.out)
    train(cfg)
    run_id = _run_id(run)
    for path in list_checkpoints(run):
        path.write_bytes(path.read_bytes()[:500])
    train(cfg, resume="auto")
    assert _steps(run) == [1, 2, 3]  # logged once, not appended after the old steps 1..3
    assert _run_id(run) == run_id
    skipped = [json.loads(x) for x in (run / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == len({json.dumps(r) for r in skipped})  # the old run's skip report is not repeated


def _cli_args(cfg_over: dict) -> list[str]:
    args = ["train", "--config", str(RECIPE)]
    for section, values in cfg_over.items():
        for k, v in values.items():
            args += ["--set", f"{section}.{k}={'null' if v is None else json.dumps(v)}"]
    return args


def test_cli_refuses_with_one_line_and_exit_2(tmp_path, tiny_arch, capsys):
    from farslip.cli import main

    over = tiny_overrides(tmp_path, 2, steps=1)
    args = _cli_args(over)
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2  # the folder holds that run now
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume auto" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    assert main(args + ["--set", "optim.lr=true", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["farslip: error: --set optim.lr: expected float, got true (a boolean)"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-5\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.yaml" in err and "YAML" in err  # the file and what is wrong
