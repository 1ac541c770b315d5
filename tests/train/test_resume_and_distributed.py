"""Exact resume (bit-identical losses on CPU, workers=0) and checkpoints; two processes: test_multirank.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import farslip
from farslip.train import load_config, train
from farslip.train.checkpoint import list_checkpoints

from support.fixtures import REPO, tiny_overrides


def _losses(run: Path) -> dict[int, dict]:
    return {e["step"]: e for e in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("recipe,stage,precision", [
    ("stage1_vitb16_rs5m.yaml", 1, "fp32"), ("stage2_vitb16_mgrs.yaml", 2, "fp32"),
    ("ablations/stage1_ema_target.yaml", 1, "fp32"),
    ("stage1_vitb16_rs5m.yaml", 1, "amp"),  # the recipes' fp16 + GradScaler: the scaler's state resumes too
])
def test_resume_is_bit_identical(tmp_path, tiny_arch, recipe, stage, precision):
    # batch 2 over the tiny sets gives several steps per epoch: the run crosses an epoch boundary.
    over = tiny_overrides(tmp_path / "a", stage, steps=7, optim={"batch_size": 2, "precision": precision,
                                                                   "warmup": 3, "max_steps": 7, "lr": 1e-3})
    over["run"]["save_every"] = 3
    over["optim"]["epochs"] = 3
    full = load_config(REPO / "configs" / recipe, over)
    train(full)

    over["run"]["out"] = str(tmp_path / "b")
    over["run"]["stop_after"] = 4  # stopped after step 4 (last checkpoint at 4) ...
    train(load_config(REPO / "configs" / recipe, over))
    over["run"]["stop_after"] = None  # ... and resumed
    train(load_config(REPO / "configs" / recipe, over), resume="auto")

    a, b = _losses(tmp_path / "a" / "run"), _losses(Path(over["run"]["out"]))
    assert sorted(b) == list(range(1, 8))
    for step in range(1, 8):
        for key in ("total", "global_itc", "lr", "logit_scale"):
            assert a[step][key] == b[step][key], (step, key)
    wa = farslip.load_model(checkpoint=tmp_path / "a" / "run" / "final.pt")[0].state_dict()
    wb = farslip.load_model(checkpoint=Path(over["run"]["out"]) / "final.pt")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_keep_last_and_skip_corrupt(tmp_path, tiny_arch):
    over = tiny_overrides(tmp_path, 2, steps=6)
    over["run"].update(save_every=1, keep_last=2, stop_after=5)
    cfg = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", over)
    train(cfg)
    ckpts = list_checkpoints(Path(cfg.run.out))
    assert [p.name for p in ckpts] == ["step_00000004.pt", "step_00000005.pt"]
    assert not list((Path(cfg.run.out) / "checkpoints").glob("*.tmp"))
    payload = torch.load(ckpts[-1], weights_only=True)
    assert {"optimizer", "ranks", "progress", "run_id", "config", "git_commit", "farslip_meta"} <= set(payload)
    assert {"rng", "data"} <= set(payload["ranks"][0])  # each rank's own RNG states and place in the data
    assert {"epoch", "batch_in_epoch", "cursors", "skipped_records"} <= set(payload["ranks"][0]["data"])
    # A checkpoint is a model file too: load_model needs no other argument.
    model, *_ = farslip.load_model(checkpoint=ckpts[-1])
    assert model.context_length == 248  # stage 2 recipe: long text
    # The newest is truncated (a crash while copying it elsewhere): resume falls back to the previous one.
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:1000])
    cfg.run.stop_after = None
    result = train(cfg, resume="auto")
    assert result["steps"] == 6
    assert _losses(Path(cfg.run.out))[5]["step"] == 5


def test_long_text_rows_stay_frozen_in_training(tmp_path, tiny_arch):
    cfg = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", tiny_overrides(tmp_path, 2, steps=3))
    cfg.optim.lr = 1e-2
    torch.manual_seed(0)
    start, *_ = farslip.load_model(tiny_arch)
    farslip.extend_text_context(start, 248)
    train(cfg)
    end, *_ = farslip.load_model(checkpoint=Path(cfg.run.out) / "final.pt")
    assert torch.equal(end.positional_embedding[:20], start.positional_embedding[:20])
    assert not torch.equal(end.positional_embedding[20:], start.positional_embedding[20:])


def test_resume_keeps_the_checkpoints_frozen_text_rows(tmp_path, tiny_arch):
    """Rows 0..19 of a long-text model stay what the checkpoint holds, not what a fresh model would hold."""
    start, *_ = farslip.load_model(tiny_arch)
    farslip.extend_text_context(start, 248)
    with torch.no_grad():
        start.positional_embedding[:20] += 1.0  # pretrained rows unlike any random initialisation
    pretrained = farslip.save_model(start, tmp_path / "pretrained.pt")
    over = tiny_overrides(tmp_path, 2, steps=4)
    over["model"]["pretrained"] = str(pretrained)
    over["optim"]["lr"] = 1e-2
    over["run"]["stop_after"] = 2
    cfg = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", over)
    train(cfg)
    cfg.run.stop_after = None
    train(cfg, resume="auto")
    end, *_ = farslip.load_model(checkpoint=Path(cfg.run.out) / "final.pt")
    assert torch.equal(end.positional_embedding[:20], start.positional_embedding[:20])
