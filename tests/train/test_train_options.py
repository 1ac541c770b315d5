"""Options of the trainer: gradient checkpointing, bf16 autocast, validation, TensorBoard, the CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from farslip.eval.validation import retrieval_validator
import torch

from farslip.objectives import FarSLIPObjective
from farslip.train import load_config, train

from support.fixtures import REPO, tiny_overrides


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model):
    from support.batches import stage1_batch

    model, _, tok = tiny_model
    batch = stage1_batch(tok)
    results = []
    for flag in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(flag)
        loss = FarSLIPObjective.stage1()(model, batch)["total"]
        loss.backward()
        results.append((loss.detach(), model.visual.conv1.weight.grad.clone()))
    model.set_grad_checkpointing(False)
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_bf16_validation_tensorboard_and_cli(tmp_path, tiny_arch):
    over = tiny_overrides(tmp_path, 2, steps=2)
    # A held-out retrieval CSV from the same images.
    root = Path(over["data"]["train"]).parent / "global_imgs"
    with open(tmp_path / "val.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for i in range(6):
            w.writerow([f"{i:03d}.png", f"scene {i}"])
    over["optim"]["precision"] = "amp_bf16"
    over["model"]["grad_checkpointing"] = True
    over["run"].update(val_every=2, val_csv=str(tmp_path / "val.csv"), val_image_root=str(root), tensorboard=True)
    cfg = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", over)
    train(cfg, validate=retrieval_validator(cfg.run.val_csv, cfg.run.val_image_root))
    run = Path(cfg.run.out)
    entries = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    val = [e for e in entries if "val/text2img_R@1" in e]
    assert len(val) == 1 and val[0]["step"] == 2 and 0 <= val[0]["val/text2img_R@1"] <= 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").read_text().count("amp_bf16") == 1


def test_cli_train_help_and_run(tmp_path, tiny_arch, capsys):
    from farslip.cli import main

    try:
        main(["train", "--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    assert "stage1_vitb16_rs5m.yaml" in text and "torchrun" in text and "--resume" in text
    over = tiny_overrides(tmp_path, 1, steps=1)
    args = ["train", "--config", str(REPO / "configs" / "stage1_vitb16_rs5m.yaml")]
    for section, values in over.items():
        for k, v in values.items():
            args += ["--set", f"{section}.{k}={'null' if v is None else v}"]
    assert main(args) == 0
    assert json.loads((Path(over["run"]["out"]) / "summary.json").read_text())["steps"] == 1


def test_compile_option_wraps_the_step(tmp_path, tiny_arch, monkeypatch):
    """``optim.compile`` hands the step module to torch.compile; the run still trains and saves the plain model."""
    compiled = []

    def fake_compile(module, **kwargs):  # the real compiler is exercised by the next test
        compiled.append(type(module).__name__)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    over = tiny_overrides(tmp_path, 1, steps=1)
    over["optim"]["compile"] = True
    cfg = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over)
    train(cfg)
    assert compiled == ["TrainStep"]
    assert (Path(cfg.run.out) / "final.pt").exists()


def test_compiled_step_matches_eager(tmp_path, tiny_arch):
    """The real compiler (inductor, about 25 s here) on two stage-1 steps: the same losses as eager."""
    losses = {}
    for flag in (False, True):
        over = tiny_overrides(tmp_path / str(flag), 1, steps=2)
        over["optim"].update(compile=flag, precision="fp32")
        cfg = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over)
        train(cfg)
        log = [json.loads(x) for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
        losses[flag] = [e["total"] for e in log if "total" in e]
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
