"""Memory per rank of a large tower's training step: DDP-style replicas against FSDP2 (``optim.fsdp``).

    python benchmarks/bench_fsdp.py --arch ViT-L-14 --batch 2 --runs plain:1,fsdp:1,fsdp:2 \
        --out benchmarks/results/cpu-fsdp-vitl14.json           # CPU: reduced batch, 2 ranks at most
    python benchmarks/bench_fsdp.py --device cuda --batch 40 --runs plain:1,fsdp:1   # one GPU (benchmarks/gpu.sh)

Each run is ``mode:ranks``: ``plain`` is the trainer without ``optim.fsdp`` (one replica of the weights, gradients
and AdamW state per rank -- DDP on several ranks), ``fsdp`` the trainer's FSDP2 (train/sharding.py: blocks sharded,
activation checkpointing, bf16 block weights). Every run is a fresh set of processes (torchrun for several ranks)
building the architecture at random (no download), then FarSLIP stage-1 steps (global + 4 crops per image,
amp_bf16) at the given batch per rank. Per rank: the peak memory (CPU: the process's own ``ru_maxrss``; GPU:
``torch.cuda.max_memory_allocated``), the bytes of its parameters, gradients and optimiser state (local shards),
and the median step time after one warm-up step.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import emit, load_snapshot, machine_info, median, peak_rss_mib, run_measured, set_threads  # noqa: E402


def _bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def child_fsdp_memory(p: dict) -> None:
    """One rank: build, (shard,) step; rank 0 emits every rank's figures."""
    import torch
    from torch import nn

    import bench_train
    import farslip
    from farslip.core import distributed
    from farslip.models.precision import autocast_for
    from farslip.objectives import FarSLIPObjective
    from farslip.train import sharding
    from farslip.train.loop import TrainStep
    from farslip.train.optim import build_optimizer

    set_threads(p["threads"])
    ctx = distributed.join(p["device"])
    torch.manual_seed(ctx.rank)
    model, _, _, tokenizer = farslip.load_model(p["arch"], device=str(ctx.device))
    model.train()
    size = model.visual.image_size
    S = int(size[0] if isinstance(size, (tuple, list)) else size)
    batch = bench_train.stage1_batch(tokenizer, p["batch"], p["views"], S, seed=ctx.rank, device=ctx.device)
    step = TrainStep(model, FarSLIPObjective.stage1())
    if p["mode"] == "fsdp":
        step = sharding.shard(step, model, ctx.device, "bf16")
    elif ctx.world > 1:
        step = nn.parallel.DistributedDataParallel(step, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                                   else None)
    optimizer = build_optimizer(model, 1e-6, 1.0)
    cuda = ctx.device.type == "cuda"
    times, sizes, loss, oom = [], {}, None, False
    try:
        for _ in range(1 + p["steps"]):
            t = time.perf_counter()
            with autocast_for(ctx.device, "bf16", training=True):
                losses = step(batch)
            losses["total"].backward()
            if p["mode"] == "fsdp":
                sharding.after_backward(model)
            sizes = {"parameters": _bytes(model.parameters()),
                     "gradients": _bytes(q.grad for q in model.parameters())}
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            loss = float(losses["total"].detach().float())
    except torch.OutOfMemoryError:  # the figure then is that it does not fit
        oom = True
    sizes["optimizer"] = _bytes(v for s in optimizer.state.values() for v in s.values()
                                if isinstance(v, torch.Tensor) and v.ndim > 0)
    mine = {"rank": ctx.rank, "peak_mib": (torch.cuda.max_memory_allocated() if cuda else peak_rss_mib() * 2 ** 20)
            / 2 ** 20, "state_mib": {k: v / 2 ** 20 for k, v in sizes.items()},
            "step_s": median(times[1:]) if len(times) > 1 else None, "loss": loss, "out_of_memory": oom}
    ranks = distributed.gather(mine)
    if ctx.is_main:
        emit({"mode": p["mode"], "world": ctx.world, "arch": p["arch"], "batch_per_rank": p["batch"],
              "params_m": sum(q.numel() for q in model.parameters()) / 1e6 if p["mode"] != "fsdp" else None,
              "ranks": ranks, "peak_mib_max": max(r["peak_mib"] for r in ranks)})
    distributed.leave()


CHILDREN = {"fsdp_memory": child_fsdp_memory}


def run(cfg: dict, log, save=None) -> dict:
    """Every ``mode:ranks`` of ``cfg["fsdp_runs"]`` in fresh processes; ``save(results)`` after each (a later run
    killed for memory keeps the earlier figures)."""
    out = {}
    for spec in cfg["fsdp_runs"]:
        mode, world = spec.split(":")
        params = {"arch": cfg["fsdp_arch"], "batch": cfg["fsdp_batch"], "views": cfg["views"], "mode": mode,
                  "steps": cfg["fsdp_steps"], "device": cfg["device"], "threads": max(1, cfg["threads"] // int(world))}
        cmd = [sys.executable, str(HERE / "run.py"), "--child", "fsdp_memory", "--params", json.dumps(params)]
        if int(world) > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                   *cmd[1:]]
        t = time.time()
        try:
            r = run_measured(cmd, params["threads"], parse_result=True)
        except RuntimeError as exc:  # e.g. killed by the kernel for memory: that is the figure
            out[spec] = {"failed": str(exc).splitlines()[0], "seconds": round(time.time() - t)}
            log(f"[fsdp] {cfg['fsdp_arch']} {spec}: failed ({out[spec]['failed']})")
            if save:
                save(out)
            continue
        out[spec] = r
        steps = [x["step_s"] for x in r["ranks"] if x["step_s"] is not None]
        r["step_s"] = median(steps) if steps else None
        r["out_of_memory"] = any(x["out_of_memory"] for x in r["ranks"])
        log(f"[fsdp] {cfg['fsdp_arch']} {spec}: peak {r['peak_mib_max']:.0f} MiB per rank"
            + (", out of memory" if r["out_of_memory"] else f", step {r['step_s']:.2f} s")
            + f" ({time.time() - t:.0f} s)")
        if save:
            save(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="ViT-L-14")
    p.add_argument("--batch", type=int, default=2, help="images per rank (each with 4 crops)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--runs", default="plain:1,fsdp:1,fsdp:2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = {"fsdp_arch": args.arch, "fsdp_batch": args.batch, "fsdp_steps": args.steps, "views": 4,
           "fsdp_runs": args.runs.split(","), "device": args.device, "threads": args.threads}
    t0 = time.time()
    out = Path(args.out) if args.out else HERE / "results" / f"{args.device}-fsdp-{time.strftime('%Y%m%d-%H%M%S')}.json"
    res = {"machine": machine_info(args.device), "config": cfg, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "load_before": load_snapshot()}

    def save(runs: dict) -> None:
        out.write_text(json.dumps({**res, "runs": runs, "seconds": round(time.time() - t0, 1)}, indent=1,
                                  default=str))

    run(cfg, lambda m: print(f"[{time.time() - t0:6.0f}s] {m}", flush=True), save)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
