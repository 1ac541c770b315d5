"""The recipes' precision path, ``optim.precision: amp`` (fp16 autocast + GradScaler, open_clip_train's default).

torch allows fp16 autocast on CPU (checked on torch 2.14: matmuls and convolutions run in float16, GradScaler('cpu')
scales, unscales and skips steps with inf/nan gradients), so this runs on any machine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from farslip.train import load_config, train
from farslip.train.checkpoint import list_checkpoints

from support.fixtures import REPO, tiny_overrides


def _run(tmp_path: Path, precision: str) -> tuple[list[dict], dict]:
    over = tiny_overrides(tmp_path / precision, 1, steps=5)
    over["optim"].update(precision=precision, lr=1e-4)
    cfg = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over)
    train(cfg)
    log = [json.loads(x) for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
    return log, torch.load(list_checkpoints(Path(cfg.run.out))[-1], weights_only=True)


def test_amp_fp16_tracks_fp32(tmp_path, tiny_arch):
    fp32, fp32_ckpt = _run(tmp_path, "fp32")
    amp, amp_ckpt = _run(tmp_path, "amp")
    assert [e["step"] for e in amp] == [e["step"] for e in fp32] == [1, 2, 3, 4, 5]
    # fp16 really ran: the losses are close to fp32's but not the same numbers.
    assert amp[0]["total"] != fp32[0]["total"]
    # Step 1 is the same model on the same batch: only fp16 rounding separates the losses.
    assert amp[0]["total"] == pytest.approx(fp32[0]["total"], rel=1e-3)
    # GradScaler skips a step whose fp16 gradients overflow (here the first, at the initial scale 2**16, as it does
    # on GPUs), so later amp losses trail fp32's by up to one update: the total within 5% at lr 1e-4.
    for a, b in zip(amp, fp32):
        assert a["total"] == pytest.approx(b["total"], rel=5e-2), a["step"]
    scaler = amp_ckpt["scaler"]
    assert fp32_ckpt["scaler"] is None and 0 < scaler["scale"] <= 2.0 ** 16  # saved for exact resume
    assert all(v.dtype == torch.float32 for v in amp_ckpt["state_dict"].values() if v.is_floating_point())
