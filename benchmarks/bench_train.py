"""Training step, stage 1 and stage 2: farslip's trainer path against the official step's data flow.

Variants (each one full optimisation step: forward under the precision's autocast, backward, AdamW step,
zero_grad, logit-scale clamp -- what farslip.train.loop does per step; forward+backward and the optimizer step are
also timed apart):

* ``project``   -- ``TrainStep(model, FarSLIPObjective.stageN())`` with ``farslip.train.optim.build_optimizer``
  as the trainer runs them: all views of the step in one encoder call, trunk shared, ordinary last block only on
  the rows that need it; fused AdamW where torch has the kernel (CPU and CUDA).
* ``reference`` -- baseline (a), ``reference_step.py`` as written: separate encoder calls per view set and per
  output (ordinary and dense each a full pass), per-sample box lists, padded region features.
* ``ref_shared`` -- baseline (b), ``reference_shared.py``: the same data flow with one trunk pass per view set
  giving both outputs (one reading of the unavailable official ``forward_v2``). In stage 2 (``cls`` regions) it
  is identical to (a) and is not measured twice.

The baselines step with the same AdamW parameter groups in torch's default implementation (what open_clip_train's
``optim.AdamW(...)`` gives: a per-tensor loop on CPU, foreach on CUDA).

Timing: one child process per (stage, precision) runs the variants round-robin (warm-up, then repeats
interleaved, so a change of machine load hits all variants alike); medians. Peak memory: one child per
(stage, precision, variant), one warm-up step plus one step; CPU: the child's ru_maxrss (and its growth over the
RSS just before the first step), GPU: torch.cuda.max_memory_allocated over the steps.
"""
from __future__ import annotations

import math
import time

from common import emit, median, peak_rss_mib, rss_now_mib, run_child, set_threads

VARIANTS = {1: ("project", "reference", "ref_shared"), 2: ("project", "reference")}


# ----------------------------------------------------------------------------------------------------------------
# Batches (the layout of farslip.data.batch, random pixels, realistic boxes and labels)

CATEGORIES = ["airplane", "ship", "storage tank", "baseball diamond", "tennis court", "basketball court",
              "ground track field", "harbor", "bridge", "large vehicle", "small vehicle", "helicopter",
              "roundabout", "soccer ball field", "swimming pool"]


def stage1_batch(tokenizer, B, K, S, seed=0, device="cpu"):
    import torch

    g = torch.Generator().manual_seed(seed)
    # crop boxes as RandomResizedCrop draws them: area 0.3..0.7 of the image, aspect 3/4..4/3
    area = 0.3 + 0.4 * torch.rand(B, K, generator=g)
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(B, K, generator=g))
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    x1 = (1 - w) * torch.rand(B, K, generator=g)
    y1 = (1 - h) * torch.rand(B, K, generator=g)
    captions = [f"a satellite image of {n} storage tanks and a harbor near the river" for n in range(B)]
    batch = {
        "images": torch.randn(B, 3, S, S, generator=g),
        "texts": tokenizer(captions),
        "crop_images": torch.randn(B, K, 3, S, S, generator=g),
        "crop_boxes": torch.stack([x1, y1, x1 + w, y1 + h], dim=-1),
    }
    return {k: v.to(device) for k, v in batch.items()}


def stage2_batch(tokenizer, B, R, S, seed=0, device="cpu"):
    """R region slots per image, some of them padding (MGRS images often have fewer than R usable objects): the
    last slot of every other image and the second-to-last of every fourth (3 of 16 slots for B = R = 4)."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    base = stage1_batch(tokenizer, B, R, S, seed)
    valid = torch.ones(B, R, dtype=torch.bool)
    valid[0::2, R - 1] = False
    if R > 2:
        valid[0::4, R - 2] = False
    labels = torch.randint(0, len(CATEGORIES), (B, R), generator=g)
    labels[~valid] = -1
    texts = [[f"a satellite image of {CATEGORIES[int(c)]}" for c in row] for row in labels.clamp(min=0)]
    batch = {
        "images": base["images"], "texts": base["texts"],
        "region_images": base["crop_images"], "region_boxes": base["crop_boxes"],
        "region_texts": torch.stack([tokenizer(row) for row in texts]),
        "region_labels": labels, "region_valid": valid,
    }
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------------
# One step of each variant

def make_setup(p: dict):
    import torch

    import farslip
    from farslip.objectives import FarSLIPObjective
    from farslip.models.precision import TRAINING_PRECISION, autocast_for
    from farslip.train.loop import MAX_LOGIT_SCALE, TrainStep
    from farslip.train.optim import build_optimizer
    from support.reference_shared import reference_stage1_shared, reference_stage2_shared
    from support.reference_step import reference_stage1, reference_stage2

    device = torch.device(p["device"])
    torch.manual_seed(0)
    model, _, _, tokenizer = farslip.load_model(p["arch"], device=str(device))
    model.train()
    size = model.visual.image_size
    stage, B, K = p["stage"], p["batch"], p["views"]
    S = p["size"] or int(size[0] if isinstance(size, (tuple, list)) else size)
    batch = (stage1_batch if stage == 1 else stage2_batch)(tokenizer, B, K, S, device=device)
    objective = FarSLIPObjective.stage1() if stage == 1 else FarSLIPObjective.stage2()
    step_module = TrainStep(model, objective)
    if p.get("compile"):
        step_module = torch.compile(step_module)
    ref = reference_stage1 if stage == 1 else reference_stage2
    shared = reference_stage1_shared if stage == 1 else reference_stage2_shared
    forwards = {"project": lambda: step_module(batch), "reference": lambda: ref(model, batch),
                "ref_shared": lambda: shared(model, batch)}
    # The trainer's optimizer (farslip.train.optim: fused AdamW where torch has the kernel) for the project; the
    # same AdamW groups with torch's default per-tensor implementation, as open_clip_train builds it, for the
    # baselines. Official recipe: lr 1e-6, weight decay 1.0.
    optimizers = {"project": build_optimizer(model, 1e-6, 1.0)}
    if p.get("variants", [p.get("variant")]) != ["project"]:
        plain = build_optimizer(model, 1e-6, 1.0, fused=False)
        optimizers.update(reference=plain, ref_shared=plain)
    mode = TRAINING_PRECISION[p["precision"]]  # fp32 | bf16 | fp16 (fp16: with a GradScaler, as optim.precision amp)
    autocast = lambda: autocast_for(device, mode, training=True)  # noqa: E731 -- a fresh context per step
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    p["resolved"] = {"size": S, "params_m": sum(q.numel() for q in model.parameters()) / 1e6}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    split = {}  # variant -> [(forward+backward s, optimizer s)] of the last steps

    def forward(variant):
        with autocast():
            return forwards[variant]()

    def step(variant):
        t0 = time.perf_counter()
        losses = forward(variant)
        (scaler.scale(losses["total"]) if scaler else losses["total"]).backward()
        sync()
        t1 = time.perf_counter()
        optimizer = optimizers[variant]
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        sync()
        split.setdefault(variant, []).append((t1 - t0, time.perf_counter() - t1))
        return losses

    return model, batch, forward, step, sync, split


def child_time(p: dict) -> None:
    """Round-robin timing of the variants of one (stage, precision) in one process; losses compared first."""
    import torch

    set_threads(p["threads"])
    model, batch, forward, step, sync, split = make_setup(p)
    variants = p["variants"]
    # Numerics first, on the same initial weights: every variant's losses (forward only).
    losses = {}
    for v in variants:
        with torch.no_grad():
            losses[v] = {k: float(t) for k, t in forward(v).items()}
    flops = None
    if p.get("count_flops"):
        from torch.utils.flop_counter import FlopCounterMode

        for v in variants:
            counter = FlopCounterMode(display=False)
            with counter:
                step(v)
            flops = flops or {}
            flops[v] = counter.get_total_flops()
    for _ in range(p["warmup"]):
        for v in variants:
            step(v)
    split.clear()
    times = {v: [] for v in variants}
    for r in range(p["repeats"]):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            t = time.perf_counter()
            step(v)
            times[v].append(time.perf_counter() - t)
    emit({"times": times, "median_s": {v: median(t) for v, t in times.items()}, "losses": losses, "flops": flops,
          "resolved": p["resolved"],
          "fwd_bwd_median_s": {v: median([a for a, _ in x]) for v, x in split.items()},
          "optimizer_median_s": {v: median([b for _, b in x]) for v, x in split.items()}})


def child_memory(p: dict) -> None:
    """One variant: RSS (or CUDA memory) before the steps, peak over one warm-up step and one step."""
    import torch

    set_threads(p["threads"])
    model, batch, forward, step, sync, _ = make_setup(p)
    v = p["variant"]
    cuda = p["device"] == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2 ** 20
    base_rss, peak_before = rss_now_mib(), peak_rss_mib()
    t = []
    for _ in range(2):
        t0 = time.perf_counter()
        step(v)
        t.append(time.perf_counter() - t0)
    out = {"rss_before_mib": base_rss, "peak_rss_before_mib": peak_before, "peak_rss_mib": peak_rss_mib(),
           "step_s": t}
    out["rss_growth_mib"] = out["peak_rss_mib"] - base_rss
    if cuda:
        out["cuda_base_mib"] = base
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        out["cuda_growth_mib"] = out["cuda_peak_mib"] - base
    emit(out)


# ----------------------------------------------------------------------------------------------------------------

def loss_agreement(losses: dict, precision: str) -> dict:
    """Largest relative difference between the project's and each baseline's losses (same weights, same batch)."""
    out = {}
    ref = losses["project"]
    for v, ls in losses.items():
        if v == "project":
            continue
        out[v] = max(abs(ls[k] - ref[k]) / max(abs(ref[k]), 1e-6) for k in ref if k in ls)
    tol = 1e-4 if precision == "fp32" else 3e-2  # bf16 / fp16 autocast
    out["within_tolerance"] = all(x <= tol for k, x in out.items() if k != "within_tolerance")
    out["tolerance"] = tol
    return out


def run(cfg: dict, log) -> dict:
    """All training measurements; returns a nested dict of results and ratios."""
    keys = ("arch", "batch", "views", "size", "device", "warmup", "repeats", "repeats_stage2", "precisions",
            "threads", "compile")
    results = {"config": {k: cfg.get(k) for k in keys}}
    for stage in (1, 2):
        for prec in cfg["precisions"]:
            variants = list(VARIANTS[stage])
            base = {"stage": stage, "precision": prec, "arch": cfg["arch"], "batch": cfg["batch"],
                    "views": cfg["views"], "size": cfg["size"], "device": cfg["device"], "threads": cfg["threads"],
                    "compile": cfg["compile"]}
            key = f"stage{stage}_{prec}"
            repeats = cfg["repeats"] if stage == 1 else cfg.get("repeats_stage2", cfg["repeats"])
            log(f"[train] {key}: timing {variants} ({cfg['warmup']} warm-up + {repeats} repeats each)")
            t = run_child("train_time", {**base, "variants": variants, "warmup": cfg["warmup"],
                                         "repeats": repeats,
                                         "count_flops": stage in cfg.get("flops_stages", (1,)) and cfg["flops"]},
                          cfg["threads"])
            entry = {"median_s": t["median_s"], "times": t["times"], "flops": t.get("flops"),
                     "fwd_bwd_median_s": t["fwd_bwd_median_s"], "optimizer_median_s": t["optimizer_median_s"],
                     "numerics": loss_agreement(t["losses"], prec), "losses": t["losses"]}
            entry["samples_per_s"] = {v: cfg["batch"] / s for v, s in t["median_s"].items()}
            results["config"].update(t["resolved"])
            if t.get("flops"):  # model FLOPs of one step (forward + backward) / median step time
                entry["achieved_tflops"] = {v: f / t["median_s"][v] / 1e12 for v, f in t["flops"].items()}
            entry["speedup_vs"] = {v: t["median_s"][v] / t["median_s"]["project"] for v in variants if v != "project"}
            fb = t["fwd_bwd_median_s"]
            entry["fwd_bwd_speedup_vs"] = {v: fb[v] / fb["project"] for v in variants if v != "project"}
            if cfg["memory"]:
                mem = {}
                for v in variants:
                    log(f"[train] {key}: peak memory of {v}")
                    m = run_child("train_memory", {**base, "variant": v}, cfg["threads"])
                    mem[v] = m
                entry["memory"] = mem
                field = "cuda_growth_mib" if cfg["device"] == "cuda" else "rss_growth_mib"
                entry["memory_growth_mib"] = {v: m[field] for v, m in mem.items()}
                entry["peak_mib"] = {v: m["cuda_peak_mib" if cfg["device"] == "cuda" else "child_peak_rss_mib"]
                                     for v, m in mem.items()}
            results[key] = entry
            sp = ", ".join(f"{v} {x:.2f}x" for v, x in entry["speedup_vs"].items())
            log(f"[train] {key}: samples/s " + ", ".join(f"{v} {x:.2f}" for v, x in entry["samples_per_s"].items())
                + f"; project vs {sp}; numerics {entry['numerics']}")
    # fastest mode of each against the fastest mode of each
    fastest = {}
    for stage in (1, 2):
        for v in VARIANTS[stage]:
            best = max(((results[f"stage{stage}_{p}"]["samples_per_s"][v], p) for p in cfg["precisions"]))
            fastest.setdefault(f"stage{stage}", {})[v] = {"samples_per_s": best[0], "precision": best[1]}
        f = fastest[f"stage{stage}"]
        f["speedup_vs"] = {v: f["project"]["samples_per_s"] / f[v]["samples_per_s"]
                           for v in VARIANTS[stage] if v != "project"}
    results["fastest_mode"] = fastest
    return results


CHILDREN = {"train_time": child_time, "train_memory": child_memory}
