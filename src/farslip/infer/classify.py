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
from .runner import Log, Outcome, Run, check_engine, deal


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
             stac_asset: str | None = None, log: Log | None = print, engine: str = "local",
             address: str | None = None, actors: int | None = None) -> Run:
    """Top-k classes of each input, with the classification protocol of the evaluation (prompt-ensembled class
    embeddings, 100 x cosine, softmax; :func:`~farslip.engine.scene_probabilities`). A class with synonyms scores
    by its best synonym. ``inputs`` as in :func:`~farslip.infer.segment`; under torchrun each process classifies
    its share; with ``engine="ray"`` the batches go to the model actors of a Ray cluster (``address``, ``actors``
    as in :func:`~farslip.infer.segment`). An unreadable input is counted and named, the others are classified (a
    single input's error is the call's). With ``out`` (.csv or .json) the predictions are written there. Returns
    the :class:`~farslip.infer.runner.Run` whose results are the :class:`Prediction` s in input order. ``amp``: as
    in the evaluation (None: float16 autocast on CUDA, fp32 on CPU; ``"bf16"``: bfloat16 on any device)."""
    entries = [inputs] if isinstance(inputs, (str, Path)) else inputs
    paths = expand_inputs(entries, inputs_from=inputs_from, stac_asset=stac_asset)
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    class_syn = parse_classes(classes, classes_file)
    if len(class_syn) < 2:
        raise UsageError(f"one class ({class_syn[0][0]!r}): every image would be it with probability 1; name at "
                         "least two, or rank images by one text with `farslip search query`")
    job = ClassifyJob(class_syn, list(templates), top_k, amp, checkpoint, arch, progress=progress)
    if out is not None:
        check_predictions_path(Path(out), paths + [Path(p) for p in (classes_file, checkpoint) if p and
                                                   Path(p).is_file()] + listing_files(entries, inputs_from))
    if model is None and checkpoint is None:
        raise UsageError("classify needs a checkpoint (or a model, preprocess and tokenizer)")
    check_engine(engine, address, actors, device)
    t0 = time.perf_counter()
    rank = 0
    if engine == "ray":
        preds, failed, size = _classify_on_ray(job, paths, model, batch_size, device, address, actors, progress)
    else:
        with job_ranks(device) as device:
            rank, size = world()
            mine = [paths[i] for i in deal(paths, rank, size)]
            worker = job.load(device) if model is None else job.prepare(model, preprocess, tokenizer)
            preds, failed = [], []
            for start in tqdm(range(0, len(mine), batch_size), desc="classify", unit="batch",
                              disable=not progress or rank != 0):
                done, bad = job.batch(worker, mine[start:start + batch_size])
                preds, failed = preds + done, failed + bad
            parts = gather((preds, failed))
        preds, failed = [p for ps, _ in parts for p in ps], [f for _, fs in parts for f in fs]
    if failed and len(paths) == 1:
        raise UsageError(failed[0][1])
    for path, error in failed:
        if log and rank == 0:
            log(f"{path}: FAILED -- {error}")
    order = {str(p): i for i, p in enumerate(paths)}
    outcomes = [Outcome(p.image, "done") for p in preds] + [Outcome(str(p), "failed", error=e) for p, e in failed]
    run = Run("classify", sorted(preds, key=lambda p: order[p.image]), sorted(outcomes, key=lambda o: order[o.input]),
              size, time.perf_counter() - t0, rank=rank, engine=engine)
    if out is not None and run.results and rank == 0:
        write_predictions(run.results, Path(out))
    return run


def _classify_on_ray(job: "ClassifyJob", paths: Sequence[Path], model, batch_size: int, device: str,
                     address: str | None, actors: int | None, progress: bool) -> tuple[list, list, int]:
    """The predictions and failures of the batches one process would make, classified by Ray actors; and how many
    actors there were."""
    from .ray_engine import refuse_model_in_memory, run_batches_on_ray

    refuse_model_in_memory("classify", model)
    batches = [[str(p) for p in paths[s:s + batch_size]] for s in range(0, len(paths), batch_size)]
    answers, actors_used = run_batches_on_ray(job, batches, device=device, address=address, actors=actors,
                                              progress=progress)
    preds, failed = [], []
    for items, (result, error) in zip(batches, answers):
        done, bad = result if error is None else ([], [(p, error) for p in items])
        preds, failed = preds + done, failed + bad
    return preds, failed, actors_used


@dataclass
class ClassifyWorker:
    """What a process builds once to classify many images: the model and the class embeddings."""
    model: torch.nn.Module
    preprocess: object
    text: torch.Tensor
    owner: torch.Tensor                 # each name's class
    side: int                           # longer side of the decimated read of a large raster


@dataclass
class ClassifyJob:
    """One ``classify`` run, everything but the model's weights: picklable, so a Ray actor can run its batches."""
    classes: list[list[str]]            # synonyms of each class
    templates: list[str]
    top_k: int
    amp: Amp = None
    checkpoint: str | Path | None = None
    arch: str | None = None
    command: str = "classify"
    progress: bool = False              # a prompt progress bar while the class embeddings are computed

    def load(self, device: str) -> ClassifyWorker:
        return self.prepare(*load_for_inference(self.arch, self.checkpoint, device=device))

    def prepare(self, model, preprocess, tokenizer) -> ClassifyWorker:
        names, owner = query_table(self.classes)
        with torch.no_grad():
            text = name_embeddings(model, tokenizer, names, self.templates, progress=self.progress).to(next(model.parameters()).device)
        return ClassifyWorker(model, preprocess, text, owner, 2 * model_input_size(model))

    def batch(self, worker: ClassifyWorker, paths: Sequence[str | Path]) -> tuple[list[Prediction], list]:
        """The predictions of one batch, and ``(path, error)`` of each image in it that could not be read."""
        chunk, pixels, failed = [], [], []
        for p in paths:
            try:
                pixels.append(worker.preprocess(load_image(Path(p), worker.side)))
                chunk.append(p)
            except (FarslipError, OSError, ValueError) as exc:  # one unreadable image is reported, not the end
                failed.append((p, str(exc)))
        if not chunk:
            return [], failed
        model = worker.model
        with torch.no_grad(), autocast_for(model, self.amp):
            feats = model.encode_image(torch.stack(pixels).to(next(model.parameters()).device))
        probs = scene_probabilities(feats, worker.text, worker.owner, len(self.classes))
        vals, idx = probs.topk(min(self.top_k, len(self.classes)), dim=1)
        return [Prediction(str(p), [(self.classes[j][0], round(pv, 4)) for j, pv in zip(i, v)])
                for p, v, i in zip(chunk, vals.tolist(), idx.tolist())], failed


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
