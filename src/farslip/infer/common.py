"""What every inference command shares: loading the model once, parsing class lists, normalising pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

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


def normaliser(model: nn.Module):
    """uint8 ``[3,h,w]`` -> the float input the model's preprocessing expects (its mean and std)."""
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
    std = torch.tensor(getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
    mean, std = mean.view(3, 1, 1), std.view(3, 1, 1)

    def norm(rgb: torch.Tensor) -> torch.Tensor:
        return (rgb.float() / 255 - mean.to(rgb.device)) / std.to(rgb.device)

    return norm


def model_input_size(model: nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)
