"""``farslip classify``: zero-shot scene classification of images or rasters of any size."""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core.distributed import gather, job_ranks, world
from ..core.errors import FarslipError, UsageError
from ..core.files import atomic_path, refuse_overwriting_inputs
from ..engine import SCENE_TEMPLATES, model_input_size, name_embeddings, query_table, scene_probabilities
from ..models.precision import Amp, autocast_for
from .common import load_for_inference, parse_classes
from .inputs import expand_inputs, listing_files
from .raster import open_raster, read_thumbnail
from .runner import Log, Outcome, Run, deal, rank_prefix


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


def classify(inputs: Sequence[str | Path] | str | Path, classes: Sequence[str] | None = None, *,
             checkpoint: str | Path | None = None, model=None, preprocess=None, tokenizer=None,
             classes_file: str | Path | None = None, templates: Sequence[str] = SCENE_TEMPLATES, top_k: int = 5,
             arch: str | None = None, device: str = "auto", batch_size: int = 32, progress: bool = True,
             amp: Amp = None, out: str | Path | None = None, inputs_from: str | Path | None = None,
             stac_asset: str | None = None, log: Log | None = print) -> Run:
    """Top-k classes of each input, with the classification protocol of the evaluation (prompt-ensembled class
    embeddings, 100 x cosine, softmax; :func:`~farslip.engine.scene_probabilities`). A class with synonyms scores
    by its best synonym. ``inputs`` as in :func:`~farslip.infer.segment`; under torchrun each process classifies
    its share. An unreadable input is counted and named, the others are classified (a single input's error is the
    call's). With ``out`` (.csv or .json) the predictions are written there. Returns the
    :class:`~farslip.infer.runner.Run` whose results are the :class:`Prediction` s in input order. ``amp``: as in
    the evaluation (None: float16 autocast on CUDA, fp32 on CPU; ``"bf16"``: bfloat16 on any device)."""
    entries = [inputs] if isinstance(inputs, (str, Path)) else inputs
    paths = expand_inputs(entries, inputs_from=inputs_from, stac_asset=stac_asset)
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    class_syn = parse_classes(classes, classes_file)
    if len(class_syn) < 2:
        raise UsageError(f"one class ({class_syn[0][0]!r}): every image would be it with probability 1; name at "
                         "least two, or rank images by one text with `farslip search query`")
    if out is not None:
        check_predictions_path(Path(out), paths + [Path(p) for p in (classes_file, checkpoint) if p and
                                                   Path(p).is_file()] + listing_files(entries, inputs_from))
    if model is None and checkpoint is None:
        raise UsageError("classify needs a checkpoint (or a model, preprocess and tokenizer)")
    t0 = time.perf_counter()
    with job_ranks(device) as device:
        rank, size = world()
        mine = [paths[i] for i in deal(paths, rank, size)]
        if model is None:
            model, preprocess, tokenizer = load_for_inference(arch, checkpoint, device=device)
        preds, failed = _classify_paths(mine, class_syn, model, preprocess, tokenizer, templates, top_k, batch_size,
                                        progress and rank == 0, amp)
        if failed and len(paths) == 1 and size == 1:
            raise UsageError(failed[0][1])
        for path, error in failed:
            if log:
                log(f"{rank_prefix()}{path}: FAILED -- {error}")
        outcomes = [Outcome(p.image, "done", rank) for p in preds] + \
                   [Outcome(str(p), "failed", rank, error=e) for p, e in failed]
        parts = gather((preds, outcomes))
    order = {str(p): i for i, p in enumerate(paths)}
    run = Run("classify", sorted((p for ps, _ in parts for p in ps), key=lambda p: order[p.image]),
              sorted((o for _, os_ in parts for o in os_), key=lambda o: order[o.input]), size,
              time.perf_counter() - t0, rank=rank)
    if out is not None and run.results and rank == 0:
        write_predictions(run.results, Path(out))
    return run


def _classify_paths(paths: Sequence[Path], class_syn: list[list[str]], model, preprocess, tokenizer, templates,
                    top_k: int, batch_size: int, progress: bool, amp: Amp) -> tuple[list[Prediction], list]:
    """The predictions for ``paths`` in batches, and ``(path, error)`` of each that could not be read."""
    device = next(model.parameters()).device
    names, owner = query_table(class_syn)
    with torch.no_grad():
        text = name_embeddings(model, tokenizer, names, templates, progress=progress).to(device)
    side = 2 * model_input_size(model)
    preds, failed = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="classify", unit="batch", disable=not progress):
        chunk, pixels = [], []
        for p in paths[start:start + batch_size]:
            try:
                pixels.append(preprocess(load_image(p, side)))
                chunk.append(p)
            except (FarslipError, OSError, ValueError) as exc:  # one unreadable image is reported, not the end
                failed.append((p, str(exc)))
        if not chunk:
            continue
        with torch.no_grad(), autocast_for(model, amp):
            feats = model.encode_image(torch.stack(pixels).to(device))
        probs = scene_probabilities(feats, text, owner, len(class_syn))
        vals, idx = probs.topk(min(top_k, len(class_syn)), dim=1)
        for p, v, i in zip(chunk, vals.tolist(), idx.tolist()):
            preds.append(Prediction(str(p), [(class_syn[j][0], round(pv, 4)) for j, pv in zip(i, v)]))
    return preds, failed


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
