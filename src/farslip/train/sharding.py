"""FSDP2 for large towers, behind one switch (``optim.fsdp: true``): the model, its gradients and the optimiser state
are sharded over the ranks (``torch.distributed.fsdp.fully_shard``), every transformer block recomputes its
activations in the backward pass (activation checkpointing), and with ``optim.precision: amp_bf16`` the blocks'
weights are gathered in bfloat16 for compute while gradients are reduced in float32 (``MixedPrecisionPolicy``).

Units. Each transformer block that every forward calls whole (farslip.models.towers.fsdp_blocks: the image trunk's
blocks but a CLS tower's last one, which the dense path takes apart, and the text tower's blocks) is one FSDP unit,
gathered just before it runs and freed after. The rest -- embeddings, that last block, the pooling head, the
projections, the logit scale and bias -- forms the root unit around the training step, gathered for the step.
FSDP2 shards no scalar, so the logit scale and bias become one-element tensors (checkpoints for users keep them
scalar).

Checkpoints. ``step_N.pt`` keeps what a training checkpoint holds (progress, every rank's data position and RNG,
the config) and names the folder ``step_N.dcp`` next to it, where ``torch.distributed.checkpoint`` writes the
model and optimiser state, each rank its own shard. It loads onto any number of ranks (DCP reshards), and
``farslip.load_model`` reads the model out of it without a process group.

CPU and gloo. Everything here runs with gloo on CPUs (torch 2.14): sharding, the bf16 policy, checkpointing,
clipping, DCP; tests/train/test_sharding.py runs it that way.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..core.errors import UsageError
from ..models.long_text import mask_frozen_grads
from ..models.towers import fsdp_blocks

SCALARS = ("logit_scale", "logit_bias")


def check_settings(precision_mode: str, target: str, compile_step: bool = False) -> None:
    """Refuse, in one line each, what sharding cannot do (here)."""
    if compile_step:
        raise UsageError("optim.fsdp with optim.compile is not supported: compile one or shard, not both")
    if precision_mode == "fp16":
        raise UsageError("optim.fsdp: float16 autocast with a gradient scaler is not supported with FSDP; use "
                         "optim.precision: amp_bf16 (or fp32)")
    if target != "active":
        raise UsageError(f"optim.fsdp: objective.target={target!r} needs a full teacher copy of the model on every "
                         "rank; sharded training supports the active target (the paper's)")


def shard(step: nn.Module, model: nn.Module, device: torch.device, precision_mode: str) -> nn.Module:
    """Shard ``step`` (the module whose forward runs the model and the objective) in place and return it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _join_alone(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model.set_grad_checkpointing(True)
    _one_element_scalars(model)
    bf16 = precision_mode == "bf16"
    blocks = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                  output_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in fsdp_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=blocks)
    # The root keeps float32 weights (autocast still runs its matmuls in bf16) and leaves the batch as it is: the
    # crop and region boxes must not be rounded to bf16.
    fully_shard(step, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32 if bf16 else None,
                                                                cast_forward_inputs=False))
    return step


def _join_alone(device: torch.device) -> None:
    """FSDP needs a process group even on one process: a group of one, left with the others' (distributed.leave)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)


def _one_element_scalars(model: nn.Module) -> None:
    for name in SCALARS:
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter) and p.ndim == 0:
            setattr(model, name, nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad))


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def after_backward(model: nn.Module) -> None:
    """What gradient hooks do on an ordinary model: FSDP hands sharded gradients to no hook."""
    mask_frozen_grads(model)


@contextlib.contextmanager
def gathered(step: nn.Module, sharded: bool):
    """The root unit's weights gathered whole (the blocks gather themselves as they run), so the plain model can
    be called outside the training step -- validation. Every rank enters it."""
    if not sharded:
        yield
        return
    step.unshard()
    try:
        yield
    finally:
        step.reshard()


def full(t: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value on every rank (a collective for a sharded one)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state on rank 0, on the CPU, in the shapes of an ordinary model (scalars scalar); an empty
    dict on the other ranks. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.reshape(()) if k in SCALARS and v.numel() == 1 else v for k, v in state.items()}


def save(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> str:
    """Write the model and optimiser shards of every rank to ``folder`` (a collective); returns its name. Written
    under a temporary name first, so a folder with the final name is always whole."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if dist.get_rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    if dist.get_rank() == 0:
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    dist.barrier()
    return folder.name


def load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read the model and optimiser state from ``folder`` into the sharded ``model`` and ``optimizer``, whatever the
    number of ranks that wrote it (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
