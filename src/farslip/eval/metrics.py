"""Metric functions of the three protocols, independent of models and files.

* ranks and recall for retrieval (a query is a hit at k when ANY of its true partners is among its top k);
* top-k accuracy for classification;
* intersection / union accumulation and mIoU for segmentation (mmsegmentation's IoUMetric arithmetic).

Ties. The official retrieval script ranks with ``torch.argsort(descending=True)``, which orders equal scores in an
implementation-defined way (it is not a stable sort beyond 16 elements). ``ties`` chooses the rule:

* ``"official"`` -- what the official script gets: wherever equal scores -- or scores within ``TIE_BAND_ULPS``
  float ulps, which the official per-query product could compute in another order and make equal or swap -- could
  change a result, that query's row is ranked with ``torch.argsort`` exactly as the official loop does (from the
  official computation of the row when ``row_fn`` gives it); elsewhere the answer is tie-independent and computed
  with matrix operations.
* ``"stable"`` -- equal scores keep index order (a stable descending sort);
* ``"optimistic"`` / ``"pessimistic"`` -- true partners placed first / last among equal scores.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch

TIE_RULES = ("official", "stable", "optimistic", "pessimistic")
#: Half-width of the band, in ulps of the best partner's score, inside which a score is treated as possibly tied:
#: a matrix product and the official one-query product sum in different orders and were measured to differ by up to
#: ~30 ulps on 512-d features at logit scale 100; 64 covers that with a margin, and only rows where the band
#: straddles a cutoff are re-ranked (a handful in 30,000).
TIE_BAND_ULPS = 64


# ----------------------------------------------------------------------------------------------------------------
# Ranking

def _official_row_rank(row: torch.Tensor, positive_idx: torch.Tensor) -> int:
    """Position of the first true partner in ``torch.argsort(row, descending=True)`` (the official loop)."""
    ranking = torch.argsort(row, descending=True)
    hit = torch.isin(ranking, positive_idx.to(ranking.device))
    found = hit.nonzero()
    return int(found[0, 0]) if len(found) else row.numel()


def _tie_band(best: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half-width of the possibly-tied band around each best partner's score (``TIE_BAND_ULPS`` ulps)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return TIE_BAND_ULPS * eps * best.abs().clamp_min(1.0)


def _official_ranks(lo: torch.Tensor, hi: torch.Tensor, has: torch.Tensor, N: int, ks: Sequence[int] | None,
                    official_rank: Callable[[int], int]) -> torch.Tensor:
    """Ranks from the band bounds: ``lo`` items are surely ahead of the best partner, at most ``hi``. Rows where
    tie order could change an answer (any difference; or, with ``ks``, a hit/miss at a cutoff) are ranked by
    ``official_rank(i)``; a query without partners gets ``N``."""
    if ks is None:
        ambiguous = hi > lo
    else:
        ambiguous = torch.zeros_like(has)
        for k in ks:
            ambiguous |= (lo < k) & (hi >= k)
    rank = lo.clone()
    for i in (ambiguous & has).nonzero().flatten().tolist():
        rank[i] = official_rank(i)
    return torch.where(has, rank, torch.full_like(rank, N))


def best_positive_rank(scores: torch.Tensor, positives: torch.Tensor, ties: str = "official",
                       row_fn: Callable[[int], torch.Tensor] | None = None, row_offset: int = 0,
                       ks: Sequence[int] | None = None) -> torch.Tensor:
    """0-based rank of each query's best-placed true partner.

    Args:
        scores: ``[Q, N]`` similarity of each query to each gallery item (higher is better).
        positives: ``[Q, N]`` bool, True where the gallery item is a true partner of the query.
        ties: one of :data:`TIE_RULES`.
        row_fn: for ``ties="official"``: gives query ``i``'s score row exactly as the official script computes it
            (a 1-D product); defaults to the row of ``scores``. ``i`` counts from ``row_offset``.
        ks: for ``ties="official"``: the cutoffs that will be asked of the ranks. Rows whose hit/miss at every
            cutoff does not depend on tie order are then not re-ranked (their rank is exact whenever no other item
            ties with the best partner, and gives the right answer at every cutoff otherwise). None: exact ranks.

    Returns:
        ``[Q]`` long; a query without any true partner gets ``N`` (a miss at every k).
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ in shape")
    Q, N = scores.shape
    positives = positives.to(torch.bool)
    s = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    has = positives.any(dim=1)
    best = s.masked_fill(~positives, -math.inf).max(dim=1).values if N else s.new_zeros(Q)
    best_col = best[:, None]
    if ties == "official":
        # Scores equal to the best partner's -- or a few ulps from it, which another summation order could make
        # equal -- make the official answer depend on argsort's order: such rows are ranked its way. Items above
        # that band are ahead of every partner (lo); at worst every non-partner in the band is too (hi).
        tol = _tie_band(best_col, scores.dtype)
        lo = (s > best_col + tol).sum(dim=1)
        hi = lo + (((s - best_col).abs() <= tol) & ~positives).sum(dim=1)

        def official_rank(i: int) -> int:
            row = row_fn(row_offset + i) if row_fn is not None else scores[i]
            return _official_row_rank(row.cpu(), positives[i].nonzero().flatten().cpu())

        return _official_ranks(lo, hi, has, N, ks, official_rank)
    greater = (s > best_col).sum(dim=1)
    equal = s == best_col
    if ties == "optimistic":
        rank = greater
    elif ties == "pessimistic":
        rank = greater + (equal & ~positives).sum(dim=1)
    else:  # stable
        first = (equal & positives).to(torch.uint8).argmax(dim=1)  # first index among tied true partners
        before = torch.arange(N, device=s.device)[None, :] < first[:, None]
        rank = greater + (equal & before).sum(dim=1)
    return torch.where(has, rank, torch.full_like(rank, N))


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """Number of True values in each row of a 2-D bool tensor (int64); the same as ``mask.sum(dim=1)``.

    On the CPU a row reduction of bools is slow (it casts element by element), so for a contiguous mask whose rows
    are a multiple of 8 long the bytes are summed eight at a time as int64 words, at most 127 words per partial sum
    so that no byte lane carries into the next, then the eight lanes are added up: exact, and about a hundred
    times faster on retrieval-sized score matrices. Other masks (and other devices) use ``sum``.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError("count_true needs a 2-D bool tensor")
    Q, N = mask.shape
    if mask.device.type != "cpu" or N < 1024 or N % 8 or not mask.is_contiguous():
        return mask.sum(dim=1)
    words = mask.view(torch.uint8).view(torch.int64)  # [Q, N/8], each byte 0 or 1
    full = words.shape[1] // 127 * 127
    partial = words[:, :full].reshape(Q, -1, 127).sum(dim=2)  # byte lanes hold counts <= 127
    rest = words[:, full:].sum(dim=1, keepdim=True)            # fewer than 127 words: lanes <= 126
    partial = torch.cat([partial, rest], dim=1)
    total = torch.zeros(Q, dtype=torch.int64)
    for lane in range(8):
        total += ((partial >> (8 * lane)) & 0xFF).sum(dim=1)
    return total


def count_true_columns(mask: torch.Tensor) -> torch.Tensor:
    """Number of True values in each column of a 2-D bool tensor (int64); the same as ``mask.sum(dim=0)``.

    The column twin of :func:`count_true`: 127 rows at a time are added as int64 words, each byte lane holding one
    column's count, then the lanes are read back as bytes (the lanes are the bytes' own memory positions, so this
    does not depend on byte order).
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError("count_true_columns needs a 2-D bool tensor")
    R, C = mask.shape
    if mask.device.type != "cpu" or R < 127 or C % 8 or not mask.is_contiguous():
        return mask.sum(dim=0)
    words = mask.view(torch.uint8).view(torch.int64)  # [R, C/8]
    full = R // 127 * 127
    partial = words[:full].view(-1, 127, C // 8).sum(dim=1)  # [R/127, C/8], byte lanes <= 127
    total = partial.view(torch.uint8).view(-1, C).sum(dim=0, dtype=torch.int64)
    return total + mask[full:].sum(dim=0)


def _buffer(workspace: dict | None, key, shape, dtype, device, zero: bool = False) -> torch.Tensor:
    """A reusable scratch tensor (kept in ``workspace`` across calls of the same shape: no fresh pages per block)."""
    t = workspace.get(key) if workspace is not None else None
    if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        t = (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
        if workspace is not None:
            workspace[key] = t
    return t


def best_positive_rank_indexed(scores: torch.Tensor, positive_idx: torch.Tensor, ties: str = "official",
                               row_fn: Callable[[int], torch.Tensor] | None = None, row_offset: int = 0,
                               ks: Sequence[int] | None = None, *, by_column: bool = False,
                               workspace: dict | None = None) -> torch.Tensor:
    """:func:`best_positive_rank` with each query's true partners given as gallery indices, ``[Q, P]`` long,
    ``-1`` padding (no index twice in a row). Same results; for ``ties="official"`` it works with gathers and
    counts instead of full-matrix masks (retrieval over tens of thousands of items).

    ``by_column=True``: ``scores`` is ``[N, Q]``, one column per query (the transposed matrix, not copied).
    ``workspace``: a dict the function keeps its scratch tensors in, to reuse them over a series of blocks.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    rows_view = scores.t() if by_column else scores  # [Q, N] whatever the layout
    Q, N = rows_view.shape
    valid = positive_idx >= 0
    if ties != "official" or N == 0 or positive_idx.shape[1] == 0:
        mask = torch.zeros(Q, N, dtype=torch.bool, device=scores.device)
        if N and positive_idx.shape[1]:
            rows = torch.arange(Q, device=scores.device)[:, None].expand_as(positive_idx)
            mask[rows[valid], positive_idx[valid]] = True
        return best_positive_rank(rows_view, mask, ties, row_fn=row_fn, row_offset=row_offset, ks=ks)
    s = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    has = valid.any(dim=1)
    if by_column:
        vals = s.gather(0, positive_idx.clamp(min=0).t()).t()
    else:
        vals = s.gather(1, positive_idx.clamp(min=0))
    vals = vals.masked_fill(~valid, -math.inf)  # [Q, P] the partners' own scores
    best = vals.max(dim=1).values
    tol = _tie_band(best, scores.dtype)
    # Per-query thresholds broadcast along the query's row (or column).
    b, t = (best[None, :], tol[None, :]) if by_column else (best[:, None], tol[:, None])
    # Comparisons go into a bool buffer whose rows are padded to a multiple of 8 (the padding stays False) for the
    # byte-counting fast paths.
    if by_column:
        buf = _buffer(workspace, "mask", (N, Q + (-Q) % 8), torch.bool, s.device, zero=True)
        view, count = buf[:, :Q], (lambda m: count_true_columns(m)[:Q])
    else:
        buf = _buffer(workspace, "mask", (Q, N + (-N) % 8), torch.bool, s.device, zero=True)
        view, count = buf[:, :N], count_true
    torch.gt(s, b + t, out=view)
    lo = count(buf)
    diff = _buffer(workspace, "diff", tuple(s.shape), s.dtype, s.device)
    torch.le(torch.sub(s, b, out=diff).abs_(), t, out=view)
    in_band = count(buf)
    partners_in_band = (((vals - best[:, None]).abs() <= tol[:, None]) & valid).sum(dim=1)
    hi = lo + in_band - partners_in_band

    def official_rank(i: int) -> int:
        row = row_fn(row_offset + i) if row_fn is not None else rows_view[i]
        return _official_row_rank(row.cpu(), positive_idx[i][valid[i]].cpu())

    return _official_ranks(lo, hi, has, N, ks, official_rank)


def recall_from_ranks(ranks: torch.Tensor, ks: Iterable[int] = (1, 5, 10, 100)) -> dict[int, float]:
    """Fraction of queries whose best true partner ranks within the top k, for each k."""
    n = ranks.numel()
    return {int(k): (float((ranks < k).sum()) / n if n else float("nan")) for k in ks}


def _as_mask(positives, Q: int, N: int, device) -> torch.Tensor:
    if isinstance(positives, torch.Tensor):
        return positives.to(device=device, dtype=torch.bool)
    mask = torch.zeros(Q, N, dtype=torch.bool, device=device)
    for i, idx in enumerate(positives):
        idx = list(idx)
        if idx:
            mask[i, torch.as_tensor(idx, dtype=torch.long, device=device)] = True
    return mask


def recall_at_k(scores: torch.Tensor, positives, ks: Sequence[int] = (1, 5, 10, 100),
                ties: str = "official") -> dict[str, float]:
    """Recall@k of a query-by-gallery score matrix.

    ``positives`` is a ``[Q, N]`` bool tensor or, per query, a collection of gallery indices of its true partners
    (several captions of one image, or one caption shared by several images, both work).
    Returns ``{"R@1": fraction, ...}``.
    """
    Q, N = scores.shape
    ranks = best_positive_rank(scores, _as_mask(positives, Q, N, scores.device), ties)
    return {f"R@{k}": v for k, v in recall_from_ranks(ranks, ks).items()}


# ----------------------------------------------------------------------------------------------------------------
# Classification

def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5),
                 ties: str = "official") -> list[int]:
    """Number of rows whose target class is within the top k logits, for each k.

    ``ties="official"`` uses ``logits.topk(max(ks))`` as SkyScript's/FarSLIP's ``accuracy`` does (k is capped at
    the number of classes); the other rules rank as :func:`best_positive_rank`.
    """
    targets = targets.to(logits.device).long()
    C = logits.shape[1]
    if ties == "official":
        pred = logits.topk(min(max(ks), C), dim=1, largest=True, sorted=True)[1].t()
        correct = pred.eq(targets.view(1, -1).expand_as(pred))
        return [int(correct[:min(k, C)].sum()) for k in ks]
    positives = torch.nn.functional.one_hot(targets, C).bool()
    ranks = best_positive_rank(logits, positives, ties)
    return [int((ranks < k).sum()) for k in ks]


def top1_hits(logits: torch.Tensor, targets: torch.Tensor, ties: str = "official") -> torch.Tensor:
    """Per row, whether the target is the top-1 class under the same tie rule as :func:`topk_correct`
    (``hits.sum()`` is its top-1 count); for per-class accuracy."""
    targets = targets.to(logits.device).long()
    if ties == "official":
        return logits.topk(1, dim=1)[1][:, 0].eq(targets)
    positives = torch.nn.functional.one_hot(targets, logits.shape[1]).bool()
    return best_positive_rank(logits, positives, ties) < 1


def percent(count: float, n: int, digits: int = 2) -> float:
    """``count / n`` as a percentage rounded to ``digits`` (fraction first, then x 100, as the official scripts)."""
    return round(count / n * 100, digits) if n else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# Segmentation

def reduce_zero_label(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """mmseg's ``reduce_zero_label``: 0 (no data) becomes ``ignore_index``, every other class moves down by one."""
    label = label.clone()
    label[label == 0] = ignore_index
    label = label - 1
    label[label == ignore_index - 1] = ignore_index
    return label


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """Per-class pixel counts of one image, as mmseg's ``IoUMetric.intersect_and_union``.

    Pixels labelled ``ignore_index`` are left out; label values outside ``[0, num_classes)`` count for no class
    (but the prediction at such pixels still counts for its class, as in mmseg).
    Returns ``(area_intersect, area_union, area_pred, area_label)``, each ``[num_classes]`` int64.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
    mask = label != ignore_index
    pred, label = pred[mask].long(), label[mask].long()
    intersect = pred[pred == label]

    def hist(x):
        x = x[(x >= 0) & (x < num_classes)]
        return torch.bincount(x, minlength=num_classes)[:num_classes]

    area_i, area_p, area_l = hist(intersect), hist(pred), hist(label)
    return area_i, area_p + area_l - area_i, area_p, area_l


class SegmentationMeter:
    """Accumulates :func:`intersect_and_union` over a dataset; :meth:`compute` gives mmseg's IoU metrics."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = 255):
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        z = torch.zeros(self.num_classes, dtype=torch.int64)
        self.intersect, self.union, self.pred, self.label = z.clone(), z.clone(), z.clone(), z.clone()
        self.images = 0

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        counts = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        for total, c in zip((self.intersect, self.union, self.pred, self.label), counts):
            total += c.cpu()
        self.images += 1

    def compute(self, digits: int | None = 2) -> dict:
        return segmentation_scores(self.intersect, self.union, self.label, self.class_names, digits)


def segmentation_scores(intersect: torch.Tensor, union: torch.Tensor, label: torch.Tensor,
                        class_names: Sequence[str], digits: int | None = 2) -> dict:
    """mIoU, aAcc (pixel accuracy) and mAcc in percent from accumulated counts (mmseg's ``IoUMetric``).

    A class with no ground-truth and no predicted pixel has an undefined IoU (None) and is left out of the mean,
    as ``nanmean`` does in mmseg.
    """
    i, u, l = intersect.double(), union.double(), label.double()
    iou = torch.where(u > 0, i / u.clamp_min(1), torch.full_like(i, float("nan")))
    acc = torch.where(l > 0, i / l.clamp_min(1), torch.full_like(i, float("nan")))

    def pct(x: float):
        if x != x:  # NaN
            return None
        return round(100.0 * x, digits) if digits is not None else 100.0 * x

    def nanmean(t):
        valid = t[~torch.isnan(t)]
        return float(valid.mean()) if valid.numel() else float("nan")

    total_label = float(l.sum())
    return {
        "mIoU": pct(nanmean(iou)),
        "aAcc": pct(float(i.sum()) / total_label if total_label else float("nan")),
        "mAcc": pct(nanmean(acc)),
        "IoU": {name: pct(float(v)) for name, v in zip(class_names, iou)},
        "Acc": {name: pct(float(v)) for name, v in zip(class_names, acc)},
    }
