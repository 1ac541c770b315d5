"""What the sharding tests run in each spawned process (tests/train/test_sharding.py): the same training steps under
DDP and under FSDP2 (train/sharding.py), and loading a sharded checkpoint written by another number of ranks."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

import farslip
from farslip.objectives import FarSLIPObjective
from farslip.train import sharding
from farslip.train.loop import TrainStep
from farslip.train.optim import build_optimizer

from support.batches import stage1_batch, stage2_batch
from support.towers import register_tiny_towers


def join(rank: int, world: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)


def setup(folder: str, family: str, stage: int, long_text: bool = False):
    """The model (seeded, the same on every rank), its objective and the whole batch of the test."""
    arch = register_tiny_towers(folder)[family]
    torch.manual_seed(0)
    model, _, _, tok = farslip.load_model(arch)
    if long_text:
        model = farslip.models.extend_text_context(model)
        import open_clip

        tok = open_clip.get_tokenizer(arch, context_length=model.context_length)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    batch = (stage1_batch if stage == 1 else stage2_batch)(tok, B=4, S=size)
    objective = FarSLIPObjective.stage1() if stage == 1 else FarSLIPObjective.stage2()
    return model.train(), objective, batch


def wrap(model: nn.Module, objective, mode: str, precision: str) -> nn.Module:
    """DDP (the reference) or FSDP2 as ``optim.fsdp`` builds it."""
    step = TrainStep(model, objective)
    if mode == "fsdp":
        return sharding.shard(step, model, torch.device("cpu"), precision)
    return nn.parallel.DistributedDataParallel(step)


def steps(rank, world, rendezvous, folder, cases, n_steps, out):
    """For each case ``(family, stage, precision, long_text)``, under DDP and then under FSDP: ``n_steps``
    optimiser steps on this rank's half of the batch. Rank 0 saves, per case and mode, the losses of every step
    (rank mean), the first step's whole gradients and the final weights. (One process group for all the cases:
    starting processes is what costs.)"""
    join(rank, world, rendezvous)
    try:
        records = {case: {mode: _steps(rank, world, folder, case, mode, n_steps) for mode in ("ddp", "fsdp")}
                   for case in cases}
        if rank == 0:
            torch.save(records, out)
    finally:
        dist.destroy_process_group()


def _steps(rank, world, folder, case, mode, n_steps) -> dict:
    family, stage, precision, long_text = case
    model, objective, batch = setup(folder, family, stage, long_text)
    step = wrap(model, objective, mode, precision)
    optimizer = build_optimizer(model, 1e-3, 0.1, fused=False)
    half = {k: v.chunk(world)[rank] for k, v in batch.items()}
    record = {"losses": [], "grads": None}
    for i in range(n_steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            losses = step(half)
        losses["total"].backward()
        if mode == "fsdp":
            sharding.after_backward(model)
        if i == 0:
            record["grads"] = {n: sharding.full(p.grad).detach().clone() for n, p in model.named_parameters()
                               if p.grad is not None}
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        farslip.models.restore_frozen_rows(model)
        total = losses["total"].detach().float().clone()
        dist.all_reduce(total)
        record["losses"].append(total.item() / world)
    weights = sharding.full_state_dict(model) if mode == "fsdp" else model.state_dict()
    record["weights"] = {k: v.detach().clone() for k, v in weights.items()}
    return record


def reshard(rank, world, rendezvous, folder, family, load_from, save_to, out):
    """Shard the model over ``world`` ranks, load ``load_from`` (written by another number of ranks), save it again
    to ``save_to``; rank 0 saves the whole model and optimiser state to ``out``."""
    join(rank, world, rendezvous)
    try:
        torch.save(load_and_save(folder, family, load_from, save_to), out) if rank == 0 else \
            load_and_save(folder, family, load_from, save_to)
    finally:
        dist.destroy_process_group()


def load_and_save(folder, family, load_from, save_to) -> dict:
    """In a joined group: the sharded model and optimiser -- after one step of their own, or loaded from
    ``load_from`` -- saved to ``save_to`` if given; returns their whole state (on rank 0)."""
    model, objective, batch = setup(folder, family, 1)
    step = wrap(model, objective, "fsdp", "fp32")
    optimizer = build_optimizer(model, 1e-3, 0.1, fused=False)
    if load_from:
        sharding.load(load_from, model, optimizer)
    else:
        world, rank = dist.get_world_size(), dist.get_rank()
        step({k: v.chunk(world)[rank] for k, v in batch.items()})["total"].backward()
        optimizer.step()
    if save_to:
        sharding.save(save_to, model, optimizer)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))
    return {"weights": sharding.full_state_dict(model), "optimizer": optim.get("state", {})}
