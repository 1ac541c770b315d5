"""Evaluation on 1..N processes (``torchrun -m farslip eval ...``): every rank takes a contiguous run of WHOLE
batches of a dataset, and what the ranks computed is gathered (features, in the one-process order) or summed
(counts, intersections and unions) before the metric is computed once.

Dealing whole batches keeps every batch the one process would have made: the same images go through the encoder
together, so on deterministic kernels the features, hence the metrics, are those of one process bit for bit.
When torch.distributed is not initialised every function here is the one-process path (a world of one).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from .io import ErrorPolicy, EvalDataError


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env() -> str | None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): NCCL with one GPU per local rank when CUDA
    is there, gloo on CPUs. Returns this rank's device (``"cuda:LOCAL_RANK"``), or None when there is nothing to
    choose (one process, or CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available()
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else None
    if device:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (after a barrier, so no rank tears it down under another's last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def batch_shard(n: int, batch_size: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The items of this rank: the batches ``0 .. ceil(n / batch_size) - 1`` dealt in contiguous runs, so rank 0
    has the first ones and the last (possibly short) batch is the last rank's. A rank may have none."""
    r, w = world() if rank is None or world_size is None else (rank, world_size)
    batches = -(-n // max(1, batch_size))
    lo, hi = r * batches // w, (r + 1) * batches // w
    return range(min(n, lo * batch_size), min(n, hi * batch_size))


def gather(value) -> list:
    """``value`` of every rank, in rank order (any picklable object; tensors travel through the CPU)."""
    size = world()[1]
    if size == 1:
        return [value]
    parts: list = [None] * size
    dist.all_gather_object(parts, value)
    return parts


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
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
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
