"""Zero-shot image-text retrieval (spec section 7; FarSLIP's ``tests/test_retrieval.py``).

The gallery and the queries are the UNIQUE images and the UNIQUE caption texts of the table (after the optional
prefix), each sorted as pandas' ``groupby`` sorts them; a query is a hit at k when any of its true partners is in
its top k. Scores are ``100 * text @ image`` of L2-normalised embeddings. Ranking is done in blocks with matrix
operations (:func:`farslip.eval.metrics.best_positive_rank_indexed`), with the official script's tie order where
ties matter.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.distributed import batch_shard, gather, is_main
from ..core.problems import Problem
from ..engine.images import open_image
from ..models.precision import Amp, autocast_for, model_device, model_dtype
from . import distributed
from .common import EvalResult, make_loader, progress, split_bad
from .io import ErrorPolicy, EvalDataError, read_csv
from .metrics import best_positive_rank_indexed, recall_from_ranks

KS = (1, 5, 10, 100)
#: Prefix FarSLIP adds to RSICD, RSITMD and UCM-captions captions.
SATELLITE_PREFIX = "a satellite image. "


class ImageDataset(Dataset):
    def __init__(self, paths: Sequence[str], transform, where: dict[str, tuple[str, str]] | None = None):
        self.paths, self.transform, self.where = list(paths), transform, where or {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            return self.transform(open_image(path)), i
        except Exception as exc:  # noqa: BLE001
            source, line = self.where.get(path, (path, None))
            return Problem("bad-image", source, f"cannot read image {path!r}: {type(exc).__name__}: {exc}", line,
                           "filepath")


def _collate(batch):
    good, bad = split_bad(batch)
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


def read_pairs(csv_path, image_root, caption_key: str = "title", prefix: str = "", *, img_key: str = "filepath",
               sep: str = ",", errors: ErrorPolicy | None = None, limit: int | None = None):
    """``[(image path, caption)]`` of an image-caption table, the prefix prepended, plus ``path -> "csv:line"``."""
    errors = errors or ErrorPolicy("raise")
    rows = read_csv(csv_path, [img_key, caption_key], sep)
    if limit is not None:
        rows = rows[:limit]
    root = Path(csv_path).parent if image_root is None else Path(image_root)
    pairs, where = [], {}
    for r in rows:
        loc = f"line {r.line}"
        path, caption = (r.values.get(img_key) or "").strip(), r.values.get(caption_key)
        if not path:
            errors(Problem("bad-record", str(csv_path), "empty", loc, img_key))
            continue
        if caption is None or caption == "":
            errors(Problem("bad-record", str(csv_path), "empty", loc, caption_key))
            continue
        full = os.path.join(root, path)
        pairs.append((full, prefix + caption))
        where.setdefault(full, (str(csv_path), loc))
    return pairs, where


@torch.no_grad()
def _image_features(model, preprocess, paths, where, *, batch_size, num_workers, amp, errors, show_progress, desc):
    """Normalised features of the readable images among ``paths`` and their indexes, in ``paths`` order; under
    torchrun each rank encodes its whole batches and every rank gets all of them."""
    device = model_device(model)
    shard = batch_shard(len(paths), batch_size)
    loader = make_loader(ImageDataset([paths[i] for i in shard], preprocess, where), batch_size, num_workers,
                         _collate, pin=device.type == "cuda")
    feats, kept = [], []
    with distributed.all_or_none():
        for images, idx, bad in progress(loader, desc=f"{desc} images",
                                         enabled=show_progress and is_main()):
            for b in bad:
                errors(b)
            if images is None:
                continue
            with autocast_for(model, amp):
                f = model.encode_image(images.to(device, dtype=model_dtype(model), non_blocking=True),
                                       normalize=True)
            feats.append(f.cpu())
            kept.append(idx + shard.start)
    parts = [p for p in gather((feats, kept)) if p[0]]
    if not parts:
        raise EvalDataError("no image could be read")
    return torch.cat([f for fs, _ in parts for f in fs]), torch.cat([k for _, ks in parts for k in ks])


@torch.no_grad()
def _text_features(model, tokenizer, texts, *, batch_size, amp, show_progress, desc):
    device = model_device(model)
    shard = batch_shard(len(texts), batch_size)
    feats = []
    with distributed.all_or_none():
        for i in progress(range(shard.start, shard.stop, batch_size), desc=f"{desc} texts",
                          enabled=show_progress and is_main()):
            tokens = tokenizer(list(texts[i:i + batch_size])).to(device)
            with autocast_for(model, amp):
                feats.append(model.encode_text(tokens, normalize=True).cpu())
    return torch.cat([f for part in gather(feats) for f in part])


def rank_queries(queries: torch.Tensor, gallery: torch.Tensor, positives: list[list[int]], *,
                 logit_scale: float = 100.0, ties: str = "official", block: int = 1024,
                 device: torch.device | str | None = None, ks: Sequence[int] | None = None) -> torch.Tensor:
    """Rank of each query's best true partner among ``gallery`` (block-wise ``(scale * q) @ g.T``).

    ``queries``/``gallery`` are normalised features (on CPU, as the official script keeps them); for
    ``ties="official"`` a row whose answer depends on tie order is recomputed on CPU exactly as the official loop
    does (``logit_scale * q[i] @ gallery.t()`` then ``torch.argsort``) -- only where it matters at the cutoffs
    ``ks`` when they are given.
    """
    device = torch.device(device) if device is not None else queries.device
    g_dev = gallery.to(device)
    ranks = []

    def official_row(i: int) -> torch.Tensor:
        return logit_scale * queries[i] @ gallery.t()

    table, ws = _partner_table(positives), {}
    for start in range(0, queries.shape[0], block):
        q = queries[start:start + block].to(device)
        scores = (logit_scale * q) @ g_dev.t()
        idx = table[start:start + block].to(device)
        ranks.append(best_positive_rank_indexed(scores, idx, ties, row_fn=official_row, row_offset=start,
                                                ks=ks, workspace=ws).cpu())
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def _partner_table(positives: list[list[int]]) -> torch.Tensor:
    """True partners as a padded index table ``[Q, P]`` (-1 = none): gathers instead of a dense mask."""
    lists = [sorted(set(int(j) for j in pos)) for pos in positives]
    width = max((len(x) for x in lists), default=0)
    return torch.tensor([x + [-1] * (width - len(x)) for x in lists], dtype=torch.long).reshape(len(lists), width)


#: Largest text x image score matrix (bytes) that rank_both_ways keeps whole to serve both directions.
MAX_SCORE_MATRIX_BYTES = 2 ** 31


def rank_both_ways(texts: torch.Tensor, images: torch.Tensor, text_to_images: list[list[int]],
                   image_to_texts: list[list[int]], *, text_queries: Sequence[int] | None = None,
                   logit_scale: float = 100.0, ties: str = "official", block: int = 1024,
                   device: torch.device | str | None = None, ks: Sequence[int] | None = None,
                   max_matrix_bytes: int = MAX_SCORE_MATRIX_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-to-image and image-to-text ranks from ONE score matrix ``(scale * texts) @ images.T``.

    The same results as ``rank_queries(texts[text_queries], images, text_to_images)`` and
    ``rank_queries(images, texts, image_to_texts)``, for half the matrix products: the image-to-text scores are the
    transposed text-to-image ones (a different rounding of the same products; rows whose answer depends on it are
    ranked by the official row computation in both). ``text_to_images`` has one entry per text query. When the
    matrix would exceed ``max_matrix_bytes``, or for tie rules other than ``official``, the two directions are
    ranked separately with :func:`rank_queries`.
    """
    T, I = texts.shape[0], images.shape[0]
    rows = list(range(T)) if text_queries is None else list(text_queries)
    if len(rows) != len(text_to_images) or len(image_to_texts) != I:
        raise ValueError("one list of partners per text query and per image is needed")
    device = torch.device(device) if device is not None else texts.device
    if ties != "official" or T * I * 4 > max_matrix_bytes:
        tq = texts[rows] if len(rows) < T else texts
        return (rank_queries(tq, images, text_to_images, logit_scale=logit_scale, ties=ties, block=block,
                             device=device, ks=ks),
                rank_queries(images, texts, image_to_texts, logit_scale=logit_scale, ties=ties, block=block,
                             device=device, ks=ks))
    g_dev = images.to(device)
    scores = torch.empty(T, I, device=device)
    for start in range(0, T, block):
        torch.mm(logit_scale * texts[start:start + block].to(device), g_dev.t(), out=scores[start:start + block])

    t_table, t_ranks, ws = _partner_table(text_to_images), [], {}
    rows_t = torch.tensor(rows, dtype=torch.long)
    for start in range(0, len(rows), block):
        sel = rows_t[start:start + block]
        blk = scores[start:start + block] if len(rows) == T else scores.index_select(0, sel.to(device))
        t_ranks.append(best_positive_rank_indexed(
            blk, t_table[start:start + block].to(device), ties, ks=ks, row_offset=start, workspace=ws,
            row_fn=lambda i: logit_scale * texts[rows[i]] @ images.t()).cpu())
    # image -> text: column blocks of the same matrix, read in place (each image is a column)
    i_table, i_ranks, ws = _partner_table(image_to_texts), [], {}
    for start in range(0, I, block):
        i_ranks.append(best_positive_rank_indexed(
            scores[:, start:start + block], i_table[start:start + block].to(device), ties, ks=ks,
            row_offset=start, by_column=True, workspace=ws,
            row_fn=lambda i: logit_scale * images[i] @ texts.t()).cpu())
    empty = torch.empty(0, dtype=torch.long)
    return (torch.cat(t_ranks) if t_ranks else empty), (torch.cat(i_ranks) if i_ranks else empty)


@torch.no_grad()
def retrieval(model: nn.Module, tokenizer, preprocess, csv_path, image_root=None, caption_key: str = "title",
              prefix: str = "", *, batch_size: int = 128, num_workers: int | None = None, amp: Amp = None,
              csv_img_key: str = "filepath", csv_separator: str = ",", on_error: str = "raise",
              limit: int | None = None, ties: str = "official", rank_device: str | None = None,
              ks: Sequence[int] = KS, show_progress: bool = True, desc: str | None = None,
              device=None) -> EvalResult:
    """Text-to-image and image-to-text Recall@k on an image-caption table.

    Args:
        csv_path: table with ``filepath`` and the caption column; several rows may share an image (several
            captions) or a caption (several images).
        image_root: folder the paths are relative to (default: the CSV's folder).
        caption_key: caption column (``title``; SkyScript's test set uses ``title_multi_objects``).
        prefix: prepended to every caption (``"a satellite image. "`` for RSICD, RSITMD, UCM-captions).
        amp: float16 autocast on CUDA (default: on for an fp32 model on CUDA, as the official script);
            "bf16" for bfloat16 autocast on any device (see ``autocast_for``).
        ties: tie rule (see :mod:`farslip.eval.metrics`); default the official script's order.
        rank_device: where the score blocks are computed (default: the model's device).
        device: move the model there first (default: use it where it is).
        on_error: ``"raise"`` at the first unreadable image or bad row, or ``"skip"`` and count it.

    Returns:
        ``text2img_R@1/5/10/100``, ``text2img_mean`` (mean of R@1/5/10), ``img2text_R@1/5/10/100``,
        ``img2text_mean``, all fractions; ``.info`` has the counts of unique images/texts and skipped records.
    """
    t0 = time.time()
    if device is not None:
        model.to(device)
    desc = desc or "retrieval"
    errors = ErrorPolicy(on_error)
    pairs, where = read_pairs(csv_path, image_root, caption_key, prefix, img_key=csv_img_key, sep=csv_separator,
                              errors=errors, limit=limit)
    if not pairs:
        raise EvalDataError(f"{csv_path}: no usable rows")
    model.eval()
    images = sorted({p for p, _ in pairs})
    texts = sorted({t for _, t in pairs})
    img_feats, kept = _image_features(model, preprocess, images, where, batch_size=batch_size,
                                      num_workers=num_workers, amp=amp, errors=errors,
                                      show_progress=show_progress, desc=desc)
    # Unreadable images (skip mode) leave the gallery; ground truth is re-indexed over the kept ones.
    img_index = {images[int(i)]: j for j, i in enumerate(kept.tolist())}
    images = [images[int(i)] for i in kept.tolist()]
    txt_feats = _text_features(model, tokenizer, texts, batch_size=batch_size, amp=amp,
                               show_progress=show_progress, desc=desc)
    txt_index = {t: i for i, t in enumerate(texts)}
    img2txt: list[set] = [set() for _ in images]
    txt2img: list[set] = [set() for _ in texts]
    for path, text in pairs:
        j = img_index.get(path)
        if j is None:
            continue
        img2txt[j].add(txt_index[text])
        txt2img[txt_index[text]].add(j)
    text_queries = [i for i, s in enumerate(txt2img) if s]  # texts whose images were all unreadable drop out
    dev = rank_device or model_device(model)
    ranks = None
    with distributed.all_or_none():  # all features are on every rank: rank 0 ranks them once, as one process
        if is_main():
            ranks = rank_both_ways(txt_feats, img_feats, [sorted(txt2img[i]) for i in text_queries],
                                   [sorted(s) for s in img2txt], text_queries=text_queries, ties=ties,
                                   device=dev, ks=ks)
    t_ranks, i_ranks = gather(ranks)[0]
    errors = distributed.merge_errors(errors)
    res = EvalResult()
    for name, ranks in (("text2img", t_ranks), ("img2text", i_ranks)):
        rec = recall_from_ranks(ranks, ks)
        for k in ks:
            res[f"{name}_R@{k}"] = rec[k]
        res[f"{name}_mean"] = (rec.get(1, 0) + rec.get(5, 0) + rec.get(10, 0)) / 3 if {1, 5, 10} <= set(ks) else None
    res.info = {"images": len(images), "texts": len(texts), "text_queries": len(text_queries), "pairs": len(pairs),
                "seconds": round(time.time() - t0, 2), **errors.summary()}
    return res
