"""What every inference command shares: loading the model once, parsing class lists, normalising pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..models.loading import load_model


def load_for_inference(checkpoint: str | Path, arch: str | None = None, device: str = "auto",
                       precision: str = "fp32"):
    """``(model, preprocess_eval, tokenizer)`` in eval mode on the chosen device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, preprocess, tokenizer = load_model(arch, checkpoint, device=device, precision=precision)
    return model.eval(), preprocess, tokenizer


def parse_classes(classes: Sequence[str] | None = None, classes_file: str | Path | None = None) -> list[list[str]]:
    """One entry per class, synonyms joined by commas (SegEarth-OV's class-file convention)."""
    lines: list[str] = []
    if classes_file:
        path = Path(classes_file)
        if not path.is_file():
            raise FileNotFoundError(f"class file not found: {path}")
        lines += [ln for ln in path.read_text().splitlines() if ln.strip()]
    lines += list(classes or [])
    parsed = [[s.strip() for s in ln.split(",") if s.strip()] for ln in lines]
    parsed = [p for p in parsed if p]
    if not parsed:
        raise ValueError("no classes given: pass --classes NAME [NAME ...] or --classes-file FILE")
    return parsed




