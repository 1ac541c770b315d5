"""Gradient accumulation: micro-batches of a large batch give the large batch's step where the loss is a mean over
samples (here patch-to-patch distillation alone), and the contrastive terms contrast within each micro-batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import farslip
from farslip.train import load_config, train

from support.fixtures import REPO, tiny_overrides

RECIPE = REPO / "configs" / "stage1_vitb16_rs5m.yaml"


def _run(tmp_path: Path, name: str, batch: int, accum: int, views: str = "crops", **objective) \
        -> tuple[dict, list[dict]]:
    over = tiny_overrides(tmp_path / name, 1, steps=2)
    over["data"]["views"] = views
    over["optim"].update(batch_size=batch, accum_steps=accum, lr=1e-3, warmup=1)
    over["objective"] = objective
    cfg = load_config(RECIPE, over)
    train(cfg)
    weights = farslip.load_model(checkpoint=Path(cfg.run.out) / "final.pt")[0].state_dict()
    log = [json.loads(x) for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
    return weights, log


def test_accumulated_micro_batches_equal_the_large_batch_for_a_per_sample_loss(tmp_path, tiny_arch):
    large, log_large = _run(tmp_path, "large", 4, 1, global_weight=0.0)
    micro, log_micro = _run(tmp_path, "micro", 2, 2, global_weight=0.0)
    assert [e["distill"] for e in log_micro] == pytest.approx([e["distill"] for e in log_large], rel=1e-5)
    for key in large:
        assert torch.allclose(large[key], micro[key], rtol=1e-4, atol=1e-6), key
    assert log_micro[0]["samples_per_s"] > 0


def test_the_contrastive_term_contrasts_each_micro_batch(tmp_path, tiny_arch):
    _, log_large = _run(tmp_path, "large", 4, 1, views="none", preset="vanilla")
    _, log_micro = _run(tmp_path, "micro", 2, 2, views="none", preset="vanilla")
    # fewer negatives per micro-batch: the first step's loss (same weights, same samples) is lower, as documented
    assert log_micro[0]["global_itc"] < log_large[0]["global_itc"]
