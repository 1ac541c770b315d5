#!/usr/bin/env python
"""One prepared GPU check (``benchmarks/gpu.sh``): the figures users pay for, in one JSON file.

    python benchmarks/gpu_check.py --out gpu.json          # on a CUDA machine (sized for 7-8 min on one H100/H200)
    python benchmarks/gpu_check.py --cpu --tiny --out x.json   # the CPU fallback at a tiny size (the test suite)

Parts (each reuses the benchmark modules beside this file):

* ``train_step``: one optimisation step of stage 1 and stage 2 (bench_train: ViT-B-16, batch 40, bf16 and fp16
  autocast; fp16 with a GradScaler) -- samples/s and peak memory of farslip's step and of the official step's
  data flow (tests/support/reference_step.py), model FLOPs utilisation (FLOPs counted by torch's FlopCounterMode
  over the achieved step time, against the GPU's dense peak);
* ``end_to_end``: stage-1 training throughput through a DataLoader with 8 workers decoding JPEGs: the official
  data flow (PIL crops and resizes in the workers, the reference step) against farslip's (one decode, tensor
  resizes, its step) and farslip's with ``data.views_on_device`` (workers only decode);
* ``ovss``: sliding windows batched against one window at a time (bench_ovss; masks compared);
* ``segment``: ``farslip segment`` Mpx/s on a large raster (bench_segment);
* ``fsdp``: peak memory per rank and step time of a ViT-L/14 stage-1 step at batch 40 (amp_bf16), the trainer as
  it is (``plain``) and with ``optim.fsdp`` on one GPU (activation checkpointing and bf16 block weights; sharding
  itself needs several GPUs) (bench_fsdp; an out-of-memory is recorded as such).
* ``sam3``: SAM 3 at the full size (random weights) in SegEarth-OV3's bf16 autocast: windows/s of one 1008 px
  window with 8 class prompts, the prompts batched against one at a time (masks compared), and
  ``segment --protocol segearth-ov3`` Mpx/s and peak RSS on a 4,096 x 4,096 raster (bench_sam3).

The goals the figures are read against (docs/performance.md): end-to-end >= 2x the official data flow, step >=
1.5x at no more memory, >= 40% MFU in bf16, OVSS >= 5x the one-window loop.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import emit, machine_info, median, run_child, set_threads  # noqa: E402

#: Dense (no sparsity) tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp16": 989.0}, "H100": {"bf16": 989.0, "fp16": 989.0},
               "A100": {"bf16": 312.0, "fp16": 312.0}, "L40S": {"bf16": 362.0, "fp16": 362.0}}
GOALS = {"end_to_end_vs_official": 2.0, "step_vs_official": 1.5, "mfu_bf16": 0.40, "ovss_vs_one_window": 5.0}


def config(cpu: bool, tiny: bool) -> dict:
    return {
        "device": "cpu" if cpu else "cuda", "threads": 2, "compile": False,
        "arch": "FarSLIP-Tiny" if tiny else "ViT-B-16", "batch": 2 if tiny else 40, "views": 4, "size": None,
        "warmup": 1, "repeats": 1 if tiny else 3, "repeats_stage2": 1 if tiny else 3,
        "precisions": ["bf16", "fp16"], "memory": not tiny, "flops": True, "flops_stages": (1, 2),
        "e2e_workers": 2 if tiny else 8, "e2e_steps": 2 if tiny else 12, "e2e_image": 96 if tiny else 512,
        "ovss_arch": "FarSLIP-Tiny" if tiny else "ViT-B-16", "ovss_images": 1 if tiny else 16,
        "ovss_repeats": 1 if tiny else 3,
        "segment_arch": "FarSLIP-Tiny" if tiny else "ViT-B-16", "segment_sizes": [256 if tiny else 8000],
        "segment_scale": 1.0, "segment_resampling": "opencv-linear", "segment_bf16": False,
        "fsdp_arch": "FarSLIP-Tiny" if tiny else "ViT-L-14", "fsdp_batch": 2 if tiny else 40,
        "fsdp_steps": 1 if tiny else 2, "fsdp_runs": ["plain:1", "fsdp:1"],
        "sam3_prompt_sizes": [("tiny", 128)] if tiny else [("full", 1008)], "sam3_repeats": 1 if tiny else 3,
        "sam3_segment_runs": [("tiny", 256, [])] if tiny else [("full", 4096, [])],
    }


def peak_tflops(machine: dict, precision: str) -> float | None:
    gpu = machine.get("gpu") or ""
    return next((v[precision] for k, v in PEAK_TFLOPS.items() if k in gpu), None)


# ----------------------------------------------------------------------------------------------------------------
# End to end: DataLoader workers + step

def child_end_to_end(p: dict) -> None:
    """Stage-1 steps through a DataLoader of ``workers`` processes decoding JPEGs, per variant: samples/s."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    import bench_data
    import bench_train
    from farslip.data.device_views import DeviceViewPlanner, materialise
    from farslip.data.loader import collate
    from farslip.data.records import Record
    from farslip.data.views import ViewConfig

    set_threads(p["threads"])
    setup = {**p, "stage": 1, "variants": ["project", "reference"]}
    model, batch, _, step, sync, _ = bench_train.make_setup(setup)  # step() trains on this dict, refilled below
    texts = batch["texts"]  # the text side costs the same in every variant
    device = torch.device(p["device"])
    S = model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size
    bench_data.S = S
    jpegs = bench_data.make_jpegs(64, p["image"])
    planner = DeviceViewPlanner(ViewConfig(size=S, views="crops", num_crops=p["views"],
                                           crop_scale=bench_data.SCALE, crop_ratio=bench_data.RATIO))
    official, farslip_views = bench_data.official_views_fn(), bench_data.farslip_views_fn()

    def on_device(data: bytes, seed: int):
        from io import BytesIO

        from PIL import Image

        return planner(Record("bench", "sample", "a caption"), Image.open(BytesIO(data)).convert("RGB"), seed)

    view_fns = {"official": official, "project": farslip_views, "project_views_on_device": on_device}
    tokens = lambda captions: torch.zeros(len(captions), 1, dtype=torch.long)  # noqa: E731 -- replaced by texts

    class Jpegs(Dataset):
        def __init__(self, fn):
            self.fn = fn

        def __len__(self):
            return 10 ** 6

        def __getitem__(self, i):
            sample = self.fn(jpegs[i % len(jpegs)], i)
            sample.setdefault("caption", "a caption")
            return sample

    def collate_any(samples):
        return collate(samples, tokens)

    out = {}
    for variant, fn in view_fns.items():
        loader = DataLoader(Jpegs(fn), batch_size=p["batch"], num_workers=p["workers"], collate_fn=collate_any,
                            pin_memory=device.type == "cuda", persistent_workers=False, prefetch_factor=4)
        step_variant = "reference" if variant == "official" else "project"
        it = iter(loader)
        times = []
        for n in range(p["steps"] + 1):  # the first step is warm-up (workers start, kernels compile)
            t0 = time.perf_counter()
            loaded = next(it)
            loaded = materialise(loaded, device) if "pixels" in loaded else {
                k: v.to(device, non_blocking=True) for k, v in loaded.items() if isinstance(v, torch.Tensor)}
            batch.clear()
            batch.update({k: loaded[k] for k in ("images", "crop_images", "crop_boxes")}, texts=texts)
            step(step_variant)
            sync()
            if n:
                times.append(time.perf_counter() - t0)
        del it, loader
        out[variant] = {"samples_per_s": p["batch"] / median(times), "step_s": times}
    emit(out)


CHILDREN = {"gpu_end_to_end": child_end_to_end}


def run_end_to_end(cfg: dict, log) -> dict:
    log(f"[end_to_end] stage 1, {cfg['arch']}, batch {cfg['batch']}, {cfg['e2e_workers']} loader workers, "
        f"{cfg['e2e_image']} px JPEGs, {cfg['e2e_steps']} steps per variant")
    r = run_child("gpu_end_to_end", {"arch": cfg["arch"], "batch": cfg["batch"], "views": cfg["views"],
                                     "size": cfg["size"], "device": cfg["device"], "precision": "bf16",
                                     "threads": cfg["threads"], "workers": cfg["e2e_workers"],
                                     "steps": cfg["e2e_steps"], "image": cfg["e2e_image"]}, cfg["threads"])
    base = r["official"]["samples_per_s"]
    r["speedup_vs_official"] = {k: v["samples_per_s"] / base for k, v in r.items() if isinstance(v, dict)}
    log(f"[end_to_end] samples/s " + ", ".join(f"{k} {v['samples_per_s']:.1f}" for k, v in r.items()
                                               if isinstance(v, dict) and "samples_per_s" in v))
    return r


# ----------------------------------------------------------------------------------------------------------------

def summarise(res: dict, cfg: dict) -> dict:
    """The figures the goals are read on, flat: one entry per stage and precision, then the other parts."""
    out = {"train_step": {}}
    t = res["train_step"]
    for stage in (1, 2):
        for prec in cfg["precisions"]:
            e = t[f"stage{stage}_{prec}"]
            peak = e.get("peak_mib") or {}
            tflops = (e.get("achieved_tflops") or {}).get("project")
            ceiling = peak_tflops(res["machine"], prec)
            out["train_step"][f"stage{stage}_{prec}"] = {
                "samples_per_s": e["samples_per_s"], "speedup_vs_official": e["speedup_vs"].get("reference"),
                "peak_memory_mib": peak, "achieved_tflops": tflops,
                "mfu": (tflops / ceiling) if tflops and ceiling else None, "peak_tflops": ceiling,
                "losses_agree": e["numerics"]["within_tolerance"]}
    e2e = res["end_to_end"]
    out["end_to_end"] = {"samples_per_s": {k: v["samples_per_s"] for k, v in e2e.items()
                                           if isinstance(v, dict) and "samples_per_s" in v},
                         "speedup_vs_official": e2e["speedup_vs_official"]}
    o = res["ovss"]
    out["ovss"] = {"images_per_s": o["images_per_s"], "speedup_vs_one_window": o["speedup"],
                   "masks_identical": o["masks_identical"]}
    s = res["segment"]
    out["segment"] = {"arch": s["arch"], **{f"{k}px": {"mpx_per_s": v["mpx_per_s"], "peak_rss_mib": v["peak_rss_mib"]}
                                            for k, v in s["runs"].items()}}
    out["fsdp"] = {spec: {"arch": cfg["fsdp_arch"], "batch": cfg["fsdp_batch"],
                          "peak_memory_mib": r.get("peak_mib_max"), "step_s": r.get("step_s"),
                          "out_of_memory": r.get("out_of_memory"), "failed": r.get("failed")}
                   for spec, r in res["fsdp"].items()}
    s3 = res["sam3"]
    out["sam3"] = {**{f"prompts_{k}": {key: v[key] for key in ("windows_per_s", "speedup", "masks_identical",
                                                                "arithmetic")} for k, v in s3["prompts"].items()},
                   **{f"segment_{k}": {"mpx_per_s": v["mpx_per_s"], "peak_rss_mib": v["peak_rss_mib"]}
                      for k, v in s3["segment"].items()}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on the CPU (the fallback; figures are not GPU figures)")
    p.add_argument("--tiny", action="store_true", help="tiny model and sizes (checks that everything runs)")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/gpu-check-<time>.json)")
    p.add_argument("--only", default=None, help="comma list of parts: train_step, end_to_end, ovss, segment, fsdp, sam3")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device here: run on a GPU machine, or pass --cpu for the CPU fallback")
    import bench_fsdp
    import bench_ovss
    import bench_sam3
    import bench_segment
    import bench_train

    cfg = config(args.cpu, args.tiny)
    set_threads(cfg["threads"])
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    runners = {"train_step": bench_train.run, "end_to_end": run_end_to_end, "ovss": bench_ovss.run,
               "segment": bench_segment.run, "fsdp": bench_fsdp.run,
               "sam3": bench_sam3.run}
    parts = list(runners) if not args.only else [x.strip() for x in args.only.split(",")]
    res = {"machine": machine_info(cfg["device"]), "config": {k: v for k, v in cfg.items()},
           "command": " ".join(["benchmarks/gpu_check.py"] + (argv if argv is not None else sys.argv[1:])),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "goals": GOALS, "seconds": {}}
    for part in parts:
        t = time.time()
        res[part] = runners[part](cfg, log)
        res["seconds"][part] = round(time.time() - t, 1)
    res["total_seconds"] = round(time.time() - t0, 1)
    if set(parts) == set(runners):
        res["summary"] = summarise(res, cfg)
    out = Path(args.out) if args.out else HERE / "results" / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res.get("summary", {}), indent=1))
    print(f"{res['total_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
