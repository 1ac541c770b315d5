"""``farslip classify``: zero-shot scene classification of images or rasters of any size."""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core.errors import UsageError
from ..core.files import atomic_path, refuse_overwriting_inputs
from ..engine import SCENE_TEMPLATES, model_input_size, name_embeddings
from ..models.precision import Amp, autocast_for
from .common import load_for_inference, parse_classes
from .raster import RasterError, open_raster, read_thumbnail


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), best first


def load_image(path: Path, side: int) -> Image.Image:
    """Any raster as an RGB PIL image whose longer side is about ``side`` (decimated read for large ones)."""
    r = open_raster(path)
    try:
        return Image.fromarray(read_thumbnail(r, side).transpose(1, 2, 0))
    finally:
        r.close()


def classify(images: Sequence[str | Path] | str | Path, classes: Sequence[str] | None = None, *,
             checkpoint: str | Path | None = None, model=None, preprocess=None, tokenizer=None,
             classes_file: str | Path | None = None, templates: Sequence[str] = SCENE_TEMPLATES, top_k: int = 5,
             arch: str | None = None, device: str = "auto", batch_size: int = 32,
             progress: bool = True, amp: Amp = None) -> list[Prediction]:
    """Top-k classes of each image, with the classification protocol of the evaluation (prompt-ensembled class
    embeddings, 100 x cosine, softmax). A class with synonyms scores by its best synonym. ``amp``: as in the
    evaluation (None: float16 autocast on CUDA, fp32 on CPU; ``"bf16"``: bfloat16 on any device)."""
    images = [images] if isinstance(images, (str, Path)) else list(images)
    if not images:
        raise UsageError("no images given")
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    class_syn = parse_classes(classes, classes_file)
    if model is None:
        if checkpoint is None:
            raise UsageError("classify needs a checkpoint (or a model, preprocess and tokenizer)")
        model, preprocess, tokenizer = load_for_inference(checkpoint, arch, device)
    device_ = next(model.parameters()).device
    flat = [s for syn in class_syn for s in syn]
    owner = torch.tensor([i for i, syn in enumerate(class_syn) for _ in syn], device=device_)
    with torch.no_grad():
        text = name_embeddings(model, tokenizer, flat, templates).to(device_)
    side = 2 * model_input_size(model)
    out, skipped = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="classify", unit="batch", disable=not progress):
        chunk, pixels = [], []
        for p in (Path(p) for p in images[start:start + batch_size]):
            try:
                pixels.append(preprocess(load_image(p, side)))
                chunk.append(p)
            except (RasterError, OSError) as exc:  # one unreadable image is reported, not the end of the run
                skipped.append(f"{exc}")
                tqdm.write(f"skipped: {exc}", file=sys.stderr)
        if not chunk:
            continue
        x = torch.stack(pixels).to(device_)
        with torch.no_grad(), autocast_for(model, amp):
            feats = model.encode_image(x)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            probs = (100.0 * feats.float() @ text.float().t()).softmax(dim=-1)
        per_class = torch.zeros(len(chunk), len(class_syn), device=device_).scatter_reduce(
            1, owner.expand(len(chunk), -1), probs, reduce="amax", include_self=True)
        k = min(top_k, len(class_syn))
        vals, idx = per_class.topk(k, dim=1)
        for p, v, i in zip(chunk, vals.tolist(), idx.tolist()):
            out.append(Prediction(str(p), [(class_syn[j][0], round(pv, 4)) for j, pv in zip(i, v)]))
    if not out:
        raise UsageError(f"none of the {len(images)} image(s) could be read (first: {skipped[0]})")
    return out


PREDICTION_SUFFIXES = (".csv", ".json")


def check_predictions_path(path: Path, images: Sequence[str | Path]) -> None:
    """Refuse, before any work, an output that is not .csv/.json or that is one of the images."""
    if Path(path).suffix.lower() not in PREDICTION_SUFFIXES:
        raise UsageError(f"--out {path}: predictions are written as .csv or .json; name the file accordingly")
    refuse_overwriting_inputs([path], images, hint="choose another --out file")


def write_predictions(preds: list[Prediction], path: Path) -> Path:
    """The predictions as CSV (one row per image) or JSON, by the suffix; written atomically."""
    path = Path(path)
    check_predictions_path(path, [p.image for p in preds])
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".json":
            tmp.write_text(json.dumps([{"image": p.image, "top": [{"class": c, "prob": s} for c, s in p.top]}
                                       for p in preds], indent=2), encoding="utf-8")
        else:
            k = max(len(p.top) for p in preds)
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["image"] + [x for i in range(1, k + 1) for x in (f"class_{i}", f"prob_{i}")])
                for p in preds:
                    w.writerow([p.image] + [x for c, s in p.top for x in (c, s)])
    return path


def table(preds: list[Prediction]) -> str:
    """A Markdown table people can paste."""
    k = max(len(p.top) for p in preds)
    head = "| image | " + " | ".join(f"top-{i}" for i in range(1, k + 1)) + " |"
    rows = [head, "|" + "---|" * (k + 1)]
    for p in preds:
        rows.append(f"| {Path(p.image).name} | " + " | ".join(f"{c} ({s:.2f})" for c, s in p.top) + " |")
    return "\n".join(rows)
