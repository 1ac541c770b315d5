"""Two gloo processes on halves of a batch give the loss and (DDP-averaged) gradients of one process on all of it."""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from support.batches import stage1_batch, stage2_batch


def _losses_and_grads(model, objective, batch):
    model.zero_grad()
    losses = objective(model, batch)
    losses["total"].backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _setup(arch_dir, stage):
    import open_clip

    import farslip
    from farslip.objectives import FarSLIPObjective

    open_clip.add_model_config(arch_dir)
    torch.manual_seed(0)
    model, _, _, tok = farslip.load_model("Test-Tiny-ViT")
    batch = (stage1_batch if stage == 1 else stage2_batch)(tok, B=4)
    objective = FarSLIPObjective.stage1() if stage == 1 else FarSLIPObjective.stage2()
    return model, batch, objective


def _worker(rank, world, rendezvous, arch_dir, stage, out):
    torch.set_num_threads(1)
    # A file rendezvous: no TCP port to race for with other processes on the machine.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        model, batch, objective = _setup(arch_dir, stage)
        half = {k: v.chunk(world)[rank] for k, v in batch.items()}
        losses, grads = _losses_and_grads(model, objective, half)
        for g in grads.values():  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= world
        for v in losses.values():
            dist.all_reduce(v)
            v /= world
        if rank == 0:
            torch.save({"losses": losses, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("stage", [1, 2])
def test_two_processes_equal_one(tmp_path, tiny_arch, stage):
    import open_clip

    arch_dir = str(next(p for p in open_clip.factory._MODEL_CONFIG_PATHS if (p / "Test-Tiny-ViT.json").exists()))
    out = tmp_path / "dist.pt"
    # gloo occasionally aborts at start-up on a loaded 2-core machine (an infrastructure flake, not a wrong
    # value): launch once more with a fresh rendezvous before giving up. The assertions below are unchanged.
    for attempt in range(2):
        try:
            mp.start_processes(_worker, args=(2, str(tmp_path / f"rendezvous{attempt}"), arch_dir, stage, str(out)),
                               nprocs=2, join=True, start_method="spawn")
            break
        except mp.ProcessExitedException:
            if attempt == 1:
                raise
    got = torch.load(out, weights_only=True)

    model, batch, objective = _setup(arch_dir, stage)
    losses, grads = _losses_and_grads(model, objective, batch)
    # Global and region contrast see the whole batch on every rank; distillation is a mean of equal-size halves.
    for k, v in losses.items():
        assert torch.allclose(got["losses"][k], v, rtol=1e-5, atol=1e-6), k
    assert got["grads"].keys() == grads.keys()
    for n, g in grads.items():
        # Summed in another order (two halves, then all-reduce), float32 gradients differ by rounding that scales
        # with the tensor's magnitude (seen: 4e-6 on a positional-embedding gradient of max 4.3), not with each
        # element's: the absolute tolerance follows the tensor's scale.
        scale = float(g.abs().max())
        assert torch.allclose(got["grads"][n], g, rtol=1e-4, atol=1e-6 * max(1.0, 10 * scale)), n
