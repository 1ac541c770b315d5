"""Zero-shot scene classification (spec section 7; SkyScript's / FarSLIP's ``test_zero_shot_classification``).

Per class: the mean of the L2-normalised embeddings of its prompts, renormalised; logits = 100 x cosine between
the normalised image embedding and each class embedding; top-1 and top-5 accuracy in percent.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.distributed import batch_shard, is_main
from ..core.problems import Problem
from ..engine import SCENE_TEMPLATES, Template, TextEmbeddingCache, name_embeddings, scene_logits
from ..engine.images import open_image
from ..models.precision import Amp, autocast_for, model_device, model_dtype
from . import distributed
from .common import EvalResult, make_loader, progress, split_bad
from .io import ErrorPolicy, EvalDataError, read_csv, read_name_lines
from .metrics import percent, top1_hits, topk_correct


class ImageLabelDataset(Dataset):
    """``(path, label index)`` records through an image transform; unreadable images become a :class:`~farslip.core.problems.Problem`."""

    def __init__(self, records: list[tuple[str, int, str]], transform):
        self.records = records  # (path, label, (csv file, "line N")) -- where a bad image is reported
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        path, label, where = self.records[i]
        try:
            image = self.transform(open_image(path))
        except Exception as exc:  # noqa: BLE001 -- reported with file and record by the consumer
            return Problem("bad-image", where[0], f"cannot read image {path!r}: {type(exc).__name__}: {exc}", where[1],
                           "filepath")
        return image, label, i


def _collate(batch):
    good, bad = split_bad(batch)
    if not good:
        return None, None, bad
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([g[1] for g in good], dtype=torch.long)
    return images, labels, bad


def _is_int(text: str) -> bool:
    try:
        return float(text) == int(float(text))
    except ValueError:
        return False


def read_classification_csv(csv_path, classnames: Sequence[str], image_root, *, img_key: str = "filepath",
                            label_key: str = "label", sep: str = ",", errors: ErrorPolicy | None = None,
                            limit: int | None = None) -> list[tuple[str, int, str]]:
    """Records ``(image path, class index, "csv:line")`` of a SkyScript-style classification table.

    Rows with an empty label are dropped (as the official reader does). Labels are class indices when every label
    is an integer, otherwise names looked up in ``classnames``.
    """
    errors = errors or ErrorPolicy("raise")
    rows = read_csv(csv_path, [img_key, label_key], sep)
    rows = [r for r in rows if (r.values.get(label_key) or "").strip() != ""]
    if limit is not None:
        rows = rows[:limit]
    root = Path(csv_path).parent if image_root is None else Path(image_root)
    numeric = bool(rows) and all(_is_int(r.values[label_key]) for r in rows)
    index = {name: i for i, name in enumerate(classnames)}
    records = []
    for r in rows:
        where = f"line {r.line}"
        raw = r.values[label_key]
        path = (r.values.get(img_key) or "").strip()
        if not path:
            errors(Problem("bad-record", str(csv_path), "empty", where, img_key))
            continue
        if numeric:
            label = int(float(raw))
            if not 0 <= label < len(classnames):
                errors(Problem("bad-record", str(csv_path), f"{raw!r} is not a class index (0..{len(classnames) - 1})",
                               where, label_key))
                continue
        else:
            key = raw.strip() if raw.strip() in index else raw
            if key not in index:
                errors(Problem("bad-record", str(csv_path), f"{raw!r} is not in the class-name file", where, label_key))
                continue
            label = index[key]
        records.append((os.path.join(root, path), label, (str(csv_path), where)))
    return records


@torch.no_grad()
def zero_shot_classification(model: nn.Module, tokenizer, preprocess, csv_path, classnames_path, image_root=None,
                             templates: Sequence[Template] | None = None, batch_size: int = 128, *,
                             num_workers: int | None = None, amp: Amp = None,
                             csv_img_key: str = "filepath", csv_class_key: str = "label",
                             csv_separator: str = ",", on_error: str = "raise", limit: int | None = None,
                             ties: str = "official", text_cache: TextEmbeddingCache | None = None,
                             show_progress: bool = True, desc: str | None = None,
                             device=None) -> EvalResult:
    """Zero-shot classification accuracy on a ``filepath,label`` CSV.

    Args:
        model, tokenizer, preprocess: as :func:`farslip.load_model` returns them (``preprocess`` = the eval
            transform: shorter side to S bicubic, centre crop, CLIP mean/std).
        csv_path: table with an image-path column and a label column (class name or index).
        classnames_path: one class name a line, in label order (or a list of names).
        image_root: folder the CSV's paths are relative to (default: the CSV's folder).
        templates: prompt templates (``"... {c} ..."`` strings or callables); default the two scene prompts.
        amp: float16 autocast on CUDA (default: on for an fp32 model on CUDA, as the official ``precision=amp``);
            "bf16" for bfloat16 autocast on any device (see ``autocast_for``).
        device: move the model there first (default: use it where it is).
        on_error: ``"raise"`` at the first unreadable image or bad row, or ``"skip"`` and count it.
        limit: evaluate only the first ``limit`` rows (smoke tests).
        ties: how equal logits rank (see :mod:`farslip.eval.metrics`); the default mirrors ``torch.topk``.

    Returns:
        ``{"top1": %, "top5": %}`` rounded to 2 decimals; ``.info`` has ``n``, ``skipped``, ``errors``, timing and
        ``per_class_top1`` (per class name: top-1 ``correct`` of ``n``).
    """
    t0 = time.time()
    if device is not None:
        model.to(device)
    errors = ErrorPolicy(on_error)
    classnames = list(classnames_path) if isinstance(classnames_path, (list, tuple)) else read_name_lines(classnames_path)
    records = read_classification_csv(csv_path, classnames, image_root, img_key=csv_img_key, label_key=csv_class_key,
                                      sep=csv_separator, errors=errors, limit=limit)
    if not records:
        raise EvalDataError(f"{csv_path}: no usable rows")
    model.eval()
    device = model_device(model)
    classifier = name_embeddings(model, tokenizer, classnames, templates or SCENE_TEMPLATES, amp=False,
                                 cache=text_cache)
    # torchrun: this rank's whole batches; the counts are summed over ranks below
    shard = [records[i] for i in batch_shard(len(records), batch_size)]
    loader = make_loader(ImageLabelDataset(shard, preprocess), batch_size, num_workers, _collate,
                         pin=device.type == "cuda")
    correct1 = correct5 = n = 0
    class_hits, class_n = torch.zeros(len(classnames), dtype=torch.long), torch.zeros(len(classnames), dtype=torch.long)
    with distributed.all_or_none():
        for images, labels, bad in progress(loader, desc=desc or "classification",
                                            enabled=show_progress and is_main()):
            for b in bad:
                errors(b)
            if images is None:
                continue
            images = images.to(device, dtype=model_dtype(model), non_blocking=True)
            labels = labels.to(device)
            with autocast_for(model, amp):
                logits = scene_logits(model.encode_image(images), classifier)
            c1, c5 = topk_correct(logits, labels, (1, 5), ties=ties)
            correct1, correct5, n = correct1 + c1, correct5 + c5, n + images.shape[0]
            hit = top1_hits(logits, labels, ties=ties).cpu()
            class_hits += torch.bincount(labels.cpu()[hit], minlength=len(classnames))
            class_n += torch.bincount(labels.cpu(), minlength=len(classnames))
    totals, class_hits, class_n = distributed.sum_tensors([torch.tensor([correct1, correct5, n]), class_hits, class_n])
    correct1, correct5, n = (int(v) for v in totals)
    errors = distributed.merge_errors(errors)
    if n == 0:
        raise EvalDataError(f"{csv_path}: no image could be read ({errors.count} skipped)")
    per_class = {name: {"correct": int(h), "n": int(k)} for name, h, k in zip(classnames, class_hits, class_n)}
    info = {"n": n, "classes": len(classnames), "correct_top1": correct1, "correct_top5": correct5,
            "per_class_top1": per_class,
            "seconds": round(time.time() - t0, 2), **errors.summary()}
    return EvalResult({"top1": percent(correct1, n), "top5": percent(correct5, n)}, info=info)
