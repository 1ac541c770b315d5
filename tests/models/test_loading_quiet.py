"""load_model does not repeat open_clip's "initialized randomly" warning when the weights come from a checkpoint."""
from __future__ import annotations

import logging

import farslip


def test_random_init_warning_only_when_true(tiny_model, tmp_path, caplog):
    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "m.pt")
    with caplog.at_level(logging.WARNING):
        farslip.load_model(None, ckpt)
    assert "initialized randomly" not in caplog.text
    with caplog.at_level(logging.WARNING):
        farslip.load_model("Test-Tiny-ViT")  # no weights at all: the warning is true and stays
    assert "initialized randomly" in caplog.text
