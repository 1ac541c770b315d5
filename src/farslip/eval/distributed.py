"""Evaluation on 1..N processes (``torchrun -m farslip eval ...``): every rank takes a contiguous run of WHOLE
batches of a dataset, and what the ranks computed is gathered (features, in the one-process order) or summed
(counts, intersections and unions) before the metric is computed once.

Dealing whole batches keeps every batch the one process would have made: the same images go through the encoder
together, so on deterministic kernels the features, hence the metrics, are those of one process bit for bit.
Without a process group every function here is the one-process path (a world of one); joining the group and
the rank helpers themselves live in :mod:`farslip.core.distributed`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from ..core.distributed import collective_device, gather, world
from .io import ErrorPolicy, EvalDataError


@contextlib.contextmanager
def all_or_none() -> Iterator[None]:
    """Run this rank's share of the work; if any rank raised, every rank raises (the failing rank its own
    exception, the others an :class:`EvalDataError` naming it) instead of waiting forever in the next collective."""
    if world()[1] == 1:
        yield
        return
    failure = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 -- re-raised below, after the other ranks have heard of it
        failure = exc
    reports = gather(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    for rank, report in enumerate(reports):
        if report is not None:
            raise EvalDataError(f"rank {rank} failed: {report}")


def merge_errors(errors: ErrorPolicy) -> ErrorPolicy:
    """One :class:`ErrorPolicy` with every rank's skipped records: the count summed, the examples in rank order
    (the order one process meets them in, as ranks hold contiguous runs of the data)."""
    parts = gather((errors.count, errors.examples))
    if len(parts) == 1:
        return errors
    merged = ErrorPolicy(errors.on_error, errors.keep)
    merged.count = sum(c for c, _ in parts)
    merged.examples = [p for _, ex in parts for p in ex][:errors.keep]
    return merged


def sum_tensors(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Element-wise sums over ranks (all-reduce), returned on each tensor's own device."""
    if world()[1] == 1:
        return list(tensors)
    on = collective_device()
    flat = torch.cat([t.reshape(-1).to(on, torch.float64 if t.is_floating_point() else torch.int64)
                      for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].reshape(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


def sum_meter(meter) -> None:
    """Add every rank's intersections, unions, predicted and labelled pixel counts and image count into ``meter``
    (a :class:`~farslip.eval.metrics.SegmentationMeter`) in place; the counts are integers, so the sum is exact."""
    if world()[1] == 1:
        return
    images = torch.tensor([meter.images], dtype=torch.int64)
    meter.intersect, meter.union, meter.pred, meter.label, images = sum_tensors(
        [meter.intersect, meter.union, meter.pred, meter.label, images])
    meter.images = int(images)
