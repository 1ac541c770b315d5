"""Validation for the training loop: zero-shot retrieval on a held-out image-caption CSV (``run.val_csv``)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .retrieval import retrieval


def retrieval_validator(csv_path: str | Path, image_root: str | Path | None = None):
    """A ``validate`` for :func:`farslip.train.loop.train`: zero-shot retrieval recalls (fractions) on the CSV."""

    def validate(model: nn.Module, tokenizer, preprocess, step: int) -> dict:
        metrics = retrieval(model, tokenizer, preprocess, csv_path, image_root)
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}

    return validate
