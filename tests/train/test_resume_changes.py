"""A resume compares the checkpoint's config with the new one: what breaks exactness is refused with the list of
differences unless --resume-changed accepts it; harmless changes pass with a note; both are recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from farslip.train import load_config, train
from farslip.train.rundir import RunStartError

from support.fixtures import REPO, tiny_overrides
from support.hostile import assert_user_error, run_cli

RECIPE = REPO / "configs" / "vanilla_vitb16_rs5m.yaml"  # the cheapest step: global ITC on the global views


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def paused(tmp_path, tiny_arch):
    """A 6-step run paused after step 2 (checkpoint at 2)."""
    over = tiny_overrides(tmp_path, 1, steps=6)  # webdataset shards: 5 steps of 4 per epoch, two epochs
    over["optim"]["epochs"] = 2
    over["run"].update(stop_after=2)
    cfg = load_config(RECIPE, over)
    assert train(cfg)["paused"]
    cfg.run.stop_after = None
    return cfg


def test_a_changed_batch_size_or_lr_is_refused_with_the_differences(paused, capsys):
    run = Path(paused.run.out)
    config_before = (run / "config.yaml").read_text()
    paused.optim.batch_size, paused.optim.lr = 2, 1e-3
    with pytest.raises(RunStartError) as info:
        train(paused, resume="auto")
    message = str(info.value)
    assert "optim.batch_size 4 -> 2" in message and "optim.lr 0.0001 -> 0.001" in message
    assert "--resume-changed" in message
    assert (run / "config.yaml").read_text() == config_before and _steps(run) == [1, 2]
    # the command: one line, exit 2
    args = ["train", "--config", str(RECIPE), "--resume", "auto", "--set", f"run.out={run}",
            "--set", f"data.train={paused.data.train}", "--set", "model.arch=Test-Tiny-ViT",
            "--set", "model.pretrained=null", "--set", "optim.max_steps=6", "--set", "optim.epochs=2", "--set", "optim.batch_size=2",
            "--set", "data.workers=0", "--set", "optim.precision=fp32", "--set", "data.num_samples=null",
            "--set", "optim.warmup=2", "--set", "optim.lr=1e-4", "--set", "run.tensorboard=false",
            "--set", "run.progress=false", "--set", "run.save_every=1000"]
    assert_user_error(run_cli(capsys, *args), "optim.batch_size 4 -> 2", "--resume-changed")


def test_resume_changed_accepts_them_and_records_them(paused, capsys):
    run = Path(paused.run.out)
    paused.optim.batch_size, paused.optim.lr = 2, 1e-3
    result = train(paused, resume="auto", resume_changed=True)
    out = capsys.readouterr().out
    assert "accepted by --resume-changed" in out and "optim.batch_size 4 -> 2" in out
    # the rest of the epoch is re-dealt in batches of 2 (the shards' unread samples): no "epoch produced no batch"
    assert _steps(run)[:2] == [1, 2] and result["steps"] == _steps(run)[-1] > 2
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    record = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert record[0]["step"] == 2 and record[0]["accepted"] == "--resume-changed"
    assert record[0]["changes"]["optim.batch_size"] == [4, 2]


def test_harmless_changes_pass_with_a_note(paused, capsys):
    run = Path(paused.run.out)
    paused.run.log_every, paused.run.save_every = 2, 3
    train(paused, resume="auto")
    out = capsys.readouterr().out
    assert "changed (harmless): run.save_every 1000 -> 3, run.log_every 1 -> 2" in out
    assert _steps(run) == [1, 2, 4, 6]
    record = json.loads((run / "resumes.jsonl").read_text())
    assert record["accepted"] == "harmless" and record["changes"]["run.log_every"] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["log_every"] == 2


def test_max_steps_fits_the_schedule(tmp_path, tiny_arch):
    """The cosine reaches zero at optim.max_steps, not at the end of the epochs it cut short."""
    import math

    over = tiny_overrides(tmp_path, 1, steps=4)
    over["optim"].update(warmup=1, epochs=5, lr=1e-3)
    cfg = load_config(RECIPE, over)
    train(cfg)
    lrs = [json.loads(x)["lr"] for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3] + [0.5 * (1 + math.cos(math.pi * (s - 1) / 3)) * 1e-3 for s in (1, 2, 3)])
