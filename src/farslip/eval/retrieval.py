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

from .common import EvalResult, autocast_for, make_loader, model_device, model_dtype, progress, split_bad
from .io import BadRecord, ErrorPolicy, EvalDataError, open_image, read_csv
from .metrics import best_positive_rank_indexed, recall_from_ranks

KS = (1, 5, 10, 100)
#: Prefix FarSLIP adds to RSICD, RSITMD and UCM-captions captions.
SATELLITE_PREFIX = "a satellite image. "


class ImageDataset(Dataset):
    def __init__(self, paths: Sequence[str], transform, where: dict[str, str] | None = None):
        self.paths, self.transform, self.where = list(paths), transform, where or {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        try:
            return self.transform(open_image(path)), i
        except Exception as exc:  # noqa: BLE001
            where = self.where.get(path, "")
            return BadRecord(i, f"{where + ': ' if where else ''}cannot read image {path!r} (field 'filepath'): "
                                f"{type(exc).__name__}: {exc}")


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
        loc = f"{csv_path}:{r.line}"
        path, caption = (r.values.get(img_key) or "").strip(), r.values.get(caption_key)
        if not path:
            errors(f"{loc}: empty field {img_key!r}")
            continue
        if caption is None or caption == "":
            errors(f"{loc}: empty field {caption_key!r}")
            continue
        full = os.path.join(root, path)
        pairs.append((full, prefix + caption))
        where.setdefault(full, loc)
    return pairs, where


@torch.no_grad()
def _image_features(model, preprocess, paths, where, *, batch_size, num_workers, amp, errors, show_progress, desc):
    device = model_device(model)
    loader = make_loader(ImageDataset(paths, preprocess, where), batch_size, num_workers, _collate,
                         pin=device.type == "cuda")
    feats, kept = [], []
    for images, idx, bad in progress(loader, desc=f"{desc} images", enabled=show_progress):
        for b in bad:
            errors(b.error)
        if images is None:
            continue
        with autocast_for(model, amp):
            f = model.encode_image(images.to(device, dtype=model_dtype(model), non_blocking=True), normalize=True)
        feats.append(f.cpu())
        kept.append(idx)
    if not feats:
        raise EvalDataError("no image could be read")
    return torch.cat(feats), torch.cat(kept)


@torch.no_grad()
def _text_features(model, tokenizer, texts, *, batch_size, amp, show_progress, desc):
    device = model_device(model)
    feats = []
    for i in progress(range(0, len(texts), batch_size), desc=f"{desc} texts", enabled=show_progress):
        tokens = tokenizer(list(texts[i:i + batch_size])).to(device)
        with autocast_for(model, amp):
            feats.append(model.encode_text(tokens, normalize=True).cpu())
    return torch.cat(feats)


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

    # True partners as a padded index table (-1 = none): gathers instead of a dense mask per block.
    lists = [sorted(set(int(j) for j in pos)) for pos in positives]
    width = max((len(x) for x in lists), default=0)
    table = torch.tensor([x + [-1] * (width - len(x)) for x in lists], dtype=torch.long).reshape(len(lists), width)
    for start in range(0, queries.shape[0], block):
        q = queries[start:start + block].to(device)
        scores = (logit_scale * q) @ g_dev.t()
        idx = table[start:start + block].to(device)
        ranks.append(best_positive_rank_indexed(scores, idx, ties, row_fn=official_row, row_offset=start,
                                                ks=ks).cpu())
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def retrieval(model: nn.Module, tokenizer, preprocess, csv_path, image_root=None, caption_key: str = "title",
              prefix: str = "", *, batch_size: int = 128, num_workers: int | None = None, amp: bool | None = None,
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
        amp: float16 autocast on CUDA (default: on for an fp32 model on CUDA, as the official script).
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
    tq = txt_feats[text_queries] if len(text_queries) < len(texts) else txt_feats
    t_ranks = rank_queries(tq, img_feats, [sorted(txt2img[i]) for i in text_queries], ties=ties, device=dev, ks=ks)
    i_ranks = rank_queries(img_feats, txt_feats, [sorted(s) for s in img2txt], ties=ties, device=dev, ks=ks)
    res = EvalResult()
    for name, ranks in (("text2img", t_ranks), ("img2text", i_ranks)):
        rec = recall_from_ranks(ranks, ks)
        for k in ks:
            res[f"{name}_R@{k}"] = rec[k]
        res[f"{name}_mean"] = (rec.get(1, 0) + rec.get(5, 0) + rec.get(10, 0)) / 3 if {1, 5, 10} <= set(ks) else None
    res.info = {"images": len(images), "texts": len(texts), "text_queries": len(text_queries), "pairs": len(pairs),
                "seconds": round(time.time() - t0, 2), **errors.summary()}
    return res
