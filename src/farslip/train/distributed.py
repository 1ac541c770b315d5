"""One code path for 1..N processes: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK, we read them."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Initialise torch.distributed when launched by torchrun (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()  # let rank 0 finish writing before anyone tears the group down
        dist.destroy_process_group()


def all_sum(value: float | int, ctx: Dist) -> float:
    if ctx.world == 1:
        return value
    t = torch.tensor(float(value), device=ctx.device)
    dist.all_reduce(t)
    return t.item()


def gather(obj, ctx: Dist) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if ctx.world == 1:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj, ctx: Dist):
    """Rank 0's ``obj`` on every rank (so all ranks act on one decision)."""
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
