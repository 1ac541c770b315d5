"""Ranks, in one place for every room: training, evaluation and inference run the same code on 1..N processes.

``torchrun`` describes the job in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); :func:`join` reads it
and joins the process group (NCCL with one GPU per local rank, gloo on CPUs), :func:`leave` leaves it. Everything
else here works whether or not a group was joined: without one it is the one-process path (a world of one), so a
library call never needs torchrun and never joins a group by itself.

    ctx = join("auto")          # Dist(rank, world, local_rank, device)
    parts = gather(my_result)   # every rank's value, in rank order, on every rank
    leave()
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass
class Dist:
    """Where this process stands in the job, and the device it computes on."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` when no process group was joined."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that prints and writes shared files)."""
    return world()[0] == 0


def launch_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without one): known before the group is joined and
    after it is left, so a command can decide who prints once its job is over."""
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Whether torchrun (or another launcher) started several processes for this job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str | torch.device = "auto") -> Dist:
    """This process's place in the job, joining the process group torchrun describes (once; a second call
    returns the same place). ``device``: ``"auto"`` (this rank's GPU when CUDA is there, else the CPU),
    ``"cuda"`` (this rank's GPU), or an explicit ``"cuda:1"`` / ``"cpu"``, kept as given."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    text = str(device)
    cuda = torch.cuda.is_available() if text == "auto" else text.startswith("cuda")
    if text in ("auto", "cuda"):
        chosen = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    else:
        chosen = torch.device(text)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {text!r}: no CUDA GPU is visible to this process (use --device cpu or auto)")
        torch.cuda.set_device(chosen)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Dist(rank, size, local_rank, chosen)


def leave() -> None:
    """Leave the process group, after a barrier so no rank tears it down under another's last collective."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def job_ranks(device: str = "auto") -> Iterator[str]:
    """Run one job on the processes torchrun started: joins the group for the job when launched and not joined
    yet, yields the device this rank computes on (as given when there is no launcher), and leaves the group it
    joined (a group the caller joined stays)."""
    if not launched():
        yield device
        return
    joined_here = not (dist.is_available() and dist.is_initialized())
    ctx = join(device)
    try:
        yield str(ctx.device)
    finally:
        if joined_here:
            leave()


def gather(value) -> list:
    """``value`` of every rank (any picklable object; tensors travel through the CPU), in rank order, on every
    rank."""
    size = world()[1]
    if size == 1:
        return [value]
    parts: list = [None] * size
    dist.all_gather_object(parts, value)
    return parts


def broadcast(value):
    """Rank 0's ``value`` on every rank, so that all ranks act on one decision."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def collective_device() -> torch.device:
    """Where tensors for a collective must live: this rank's GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(value: float | int) -> float:
    """The sum of a number over the ranks."""
    if world()[1] == 1:
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.item()


def batch_shard(n: int, batch_size: int, rank: int | None = None, world_size: int | None = None) -> range:
    """The items of this rank: the batches ``0 .. ceil(n / batch_size) - 1`` dealt in contiguous runs, so rank 0
    has the first ones and the last (possibly short) batch is the last rank's. A rank may have none."""
    r, w = world() if rank is None or world_size is None else (rank, world_size)
    batches = -(-n // max(1, batch_size))
    lo, hi = r * batches // w, (r + 1) * batches // w
    return range(min(n, lo * batch_size), min(n, hi * batch_size))
