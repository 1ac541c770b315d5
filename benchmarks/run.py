#!/usr/bin/env python
"""farslip benchmarks: the project's paths against straightforward implementations of the official ones.

    .venv/bin/python benchmarks/run.py                 # everything, CPU defaults (make bench)
    .venv/bin/python benchmarks/run.py --quick         # smaller sizes, fewer repeats (a smoke run)
    .venv/bin/python benchmarks/run.py --only train    # one part: train, data, ovss, retrieval, segment, maps, ray, cli, sam3
    .venv/bin/python benchmarks/run.py --device cuda   # GPU: ViT-B-16, batch 40 for the training step

Each part reports medians of several repeats after warm-up and the ratio project / baseline. Results go to
``benchmarks/results/<device>-<timestamp>.json`` (and ``latest-<device>.json``); a summary is printed.
See docs/performance.md for what each measurement means and the recorded numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import fmt, load_snapshot, machine_info  # noqa: E402

PARTS = ("train", "data", "ovss", "retrieval", "segment", "maps", "ray", "cli", "sam3")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats (smoke run, ~5 min on a 2-core CPU)")
    p.add_argument("--only", default=None, help=f"comma-separated parts to run: {', '.join(PARTS)}")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--out", default=None, help="JSON results file (default: benchmarks/results/...)")
    g = p.add_argument_group("training step")
    g.add_argument("--train-arch", default=None, help="default ViT-B-32 on CPU, ViT-B-16 on CUDA")
    g.add_argument("--train-batch", type=int, default=None, help="samples per step (default 4 on CPU, 40 on CUDA)")
    g.add_argument("--train-repeats", type=int, default=None)
    g.add_argument("--precisions", default=None, help="comma list of fp32,bf16 (default both)")
    g.add_argument("--compile", action="store_true", help="torch.compile the project's TrainStep (option)")
    g.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory children")
    g = p.add_argument_group("other parts")
    g.add_argument("--ovss-arch", default="ViT-B-16")
    g.add_argument("--segment-size", type=int, default=None, help="raster side in pixels (default 8000; 20000 is "
                                                                  "the issue's memory goal)")
    g.add_argument("--segment-arch", default="FarSLIP-Tiny")
    g.add_argument("--segment-scale", type=float, default=1.0, help="segment's --scale (default 1: no resampling)")
    g.add_argument("--segment-resampling", default="opencv-linear", choices=["opencv-linear", "gdal-bilinear"],
                   help="segment's --resampling when --segment-scale resamples")
    g.add_argument("--segment-no-bf16", action="store_true",
                   help="skip the --amp bf16 rerun on a CPU with native bf16 (it doubles the time)")
    g.add_argument("--maps-size", type=int, default=None, help="raster side for locate and the vector export "
                                                               "(default 8000; 20000 for the memory goal)")
    g.add_argument("--maps-arch", default="FarSLIP-Tiny")
    g.add_argument("--maps-valid", type=int, default=None,
                   help="only an N x N square of the scene valid, the rest nodata (encodes N^2 pixels)")
    g.add_argument("--maps-no-vectors", action="store_true", help="locate only, no separate vector export run")
    g.add_argument("--ray-inputs", type=int, default=None, help="rasters for segment --engine ray (default 16)")
    g.add_argument("--ray-size", type=int, default=None, help="their side in pixels (default 1024)")
    g.add_argument("--ray-arch", default="FarSLIP-Tiny", help="model of the segment --engine ray part")
    g.add_argument("--sam3-size", type=int, default=None,
                   help="raster side for segment --protocol segearth-ov3 with the tiny SAM 3 (default 4096; 20000 is "
                        "the memory goal)")
    g.add_argument("--sam3-models", default=None,
                   help="comma list of the SAM 3 sizes to run: tiny (prompts, segment of --sam3-size), full (prompts, "
                        "segment of 2,048 x 2,048; random weights, 3.4 GB); default both, --quick tiny")
    return p


def config(args) -> dict:
    cuda = args.device == "cuda"
    q = args.quick
    sam3_models = (args.sam3_models or ("tiny" if q else "tiny,full")).split(",")
    cfg = {
        "device": args.device, "threads": args.threads, "quick": q, "compile": args.compile,
        # training step
        "arch": args.train_arch or ("ViT-B-16" if cuda else "ViT-B-32"),
        "batch": args.train_batch or (40 if cuda else (2 if q else 4)),
        "views": 4, "size": None,  # None: the model's input size (224 for ViT-B)
        "warmup": 1, "repeats": args.train_repeats or (2 if q else 3),
        "repeats_stage2": args.train_repeats or (2 if q else 5),  # stage 2 steps vary more from step to step
        "precisions": (args.precisions or "fp32,bf16").split(","),
        "memory": not args.no_memory, "flops": True,
        # data loading
        "data_sizes": [512] if q else [512, 1024], "data_images": 16 if q else 32, "data_repeats": 3 if q else 5,
        # OVSS
        "ovss_arch": args.ovss_arch, "ovss_images": 2 if q else 4, "ovss_repeats": 2 if q else 3,
        # retrieval
        "ret_texts": 30000, "ret_images": 10000, "ret_repeats": 2 if q else 3,
        "ret_loop_sample": 300 if q else 1000,
        # segment
        "segment_arch": args.segment_arch,
        "segment_sizes": [args.segment_size or (2048 if q else 8000)],
        "segment_scale": args.segment_scale, "segment_resampling": args.segment_resampling,
        "segment_bf16": not args.segment_no_bf16,
        # locate and vectors
        "maps_arch": args.maps_arch, "maps_size": args.maps_size or (2048 if q else 8000),
        "maps_valid": args.maps_valid, "maps_vectors": not args.maps_no_vectors,
        # segment --engine ray: 1 and 2 local actors
        "ray_arch": args.ray_arch, "ray_inputs": args.ray_inputs or (6 if q else 16),
        "ray_size": args.ray_size or (512 if q else 1024),
        # SAM 3: prompts batched vs one at a time (tiny and full size), segment's peak memory
        "sam3_prompt_sizes": [(m, 512) for m in sam3_models],
        "sam3_repeats": 2 if q else 3,
        "sam3_segment_runs": [(m, args.sam3_size or (1024 if q else 4096), []) if m == "tiny" else
                              (m, 2048, ["--window", "1024", "--stride", "1024"]) for m in sam3_models],
    }
    if cuda:
        cfg["precisions"] = (args.precisions or "fp32,bf16").split(",")
        cfg["ovss_images"] = 16 if not q else 4
        cfg["data_images"] = 64 if not q else 16
    return cfg


def summary(res: dict) -> str:
    lines = []
    m = res["machine"]
    lines.append(f"machine: {m.get('Model name', '?')}, {m['cpu_count']} CPUs, torch {m['torch']}, open_clip "
                 f"{m['open_clip']}, threads {m['threads']}; load before {res['load_before']}")
    t = res.get("train")
    if t:
        c = t["config"]
        lines.append(f"training step: {c['arch']} ({c.get('params_m', 0):.0f} M parameters) at {c['size']} px, "
                     f"batch {c['batch']}, {c['views']} crops/regions per image")
        for key, e in t.items():
            if not key.startswith("stage"):
                continue
            sps = ", ".join(f"{v} {fmt(x)}" for v, x in e["samples_per_s"].items())
            sp = ", ".join(f"vs {v} {fmt(x)}x" for v, x in e["speedup_vs"].items())
            mem = ""
            if "memory_growth_mib" in e:
                mem = "; peak growth MiB " + ", ".join(f"{v} {fmt(x)}" for v, x in e["memory_growth_mib"].items())
            fb = ", ".join(f"vs {v} {fmt(x)}x" for v, x in e["fwd_bwd_speedup_vs"].items())
            lines.append(f"  {key}: samples/s {sps}; project {sp} (forward+backward alone {fb}){mem}; losses "
                         f"agree: {e['numerics']['within_tolerance']}")
            if e.get("achieved_tflops"):
                tf = e["achieved_tflops"]["project"]
                gpu = res["machine"].get("gpu", "")
                mfu = f", MFU {100 * tf / 989:.1f}% of 989 TFLOP/s (H100/H200 dense bf16)" if (
                    "bf16" in key and ("H100" in gpu or "H200" in gpu)) else ""
                lines.append(f"    model FLOPs of the project's step: {fmt(e['flops']['project'] / 1e9)} GFLOP; "
                             f"achieved {fmt(1000 * tf)} GFLOP/s{mfu}")
        for stage, f in t["fastest_mode"].items():
            lines.append(f"  {stage} fastest modes: " + ", ".join(
                f"{v} {fmt(x['samples_per_s'])} ({x['precision']})" for v, x in f.items() if v != "speedup_vs")
                + "; project " + ", ".join(f"vs {v} {fmt(x)}x" for v, x in f["speedup_vs"].items()))
    d = res.get("data")
    if d:
        for size, r in d.items():
            lines.append(f"data {size}px: samples/s " + ", ".join(f"{k} {fmt(v)}" for k, v in r["samples_per_s"].items())
                         + "; speedup " + ", ".join(f"{k} {fmt(v)}x" for k, v in r["speedup"].items()))
    o = res.get("ovss")
    if o:
        lines.append(f"ovss: images/s " + ", ".join(f"{k} {fmt(v, 3)}" for k, v in o["images_per_s"].items())
                     + f"; batched vs one window {fmt(o['speedup'])}x; masks identical {o['masks_identical']}")
        if "batched_bf16" in o["images_per_s"]:
            lines.append(f"ovss bf16 (opt-in): batched {fmt(o['speedup_all']['batched_bf16'])}x the fp32 loop, "
                         f"{fmt(100 * o['agreement_with_one_window']['batched_bf16'])}% pixels agree; "
                         f"bf16 loop {fmt(o['speedup_all']['one_window_bf16'])}x")
        lines.append("ovss encoder: " + f"{fmt(o['encoder_gflop_per_image'], 0)} GFLOP/image, achieved GFLOP/s "
                     + ", ".join(f"{k} {fmt(v, 0)}" for k, v in o["achieved_gflop_per_s"].items())
                     + "; GEMM ceiling " + ", ".join(f"{k} {fmt(v, 0)}" for k, v in o["gemm_ceiling_gflop_per_s"].items()))
    r = res.get("retrieval")
    if r:
        lines.append(f"retrieval: vectorised {fmt(r['vectorised_s'])} s (one product for both directions; two: "
                     f"{fmt(r['per_direction_s'])} s), loop {fmt(r['loop_extrapolated_s'])} s (extrapolated): "
                     f"{fmt(r['speedup'], 1)}x ({fmt(r['speedup_per_direction'], 1)}x with two products)")
    s = res.get("segment")
    if s:
        for size, x in s["runs"].items():
            rescale = f", --scale {s['scale']:g} {s['resampling']}" if s.get("scale", 1.0) != 1.0 else ""
            lines.append(f"segment {size}x{size} ({s['arch']}{rescale}): {fmt(x['mpx_per_s'])} Mpx/s, peak RSS "
                         f"{fmt(x['peak_rss_mib'])} MiB")
        if "bf16" in s:
            b = s["bf16"]
            lines.append(f"segment --amp bf16: {fmt(b['mpx_per_s'])} Mpx/s ({fmt(b['speedup'])}x), "
                         f"{fmt(100 * b['agreement'])}% of pixels as fp32, peak RSS {fmt(b['peak_rss_mib'])} MiB")
    mp = res.get("maps")
    if mp:
        lo = mp["locate"]
        lines.append(f"locate {mp['size']}x{mp['size']} ({mp['arch']}, {lo['encoded_pixels'] / 1e6:.0f} Mpx encoded): "
                     f"{fmt(lo['mpx_per_s'], 3)} Mpx/s of the raster, {fmt(lo['encoded_mpx_per_s'], 3)} encoded "
                     f"Mpx/s, peak RSS {fmt(lo['peak_rss_mib'])} MiB")
        ve = mp.get("vectors")
        if ve:
            lines.append(f"vectors {mp['size']}x{mp['size']}: {ve['polygons']} polygons, {fmt(ve['mpx_per_s'])} Mpx/s, "
                         f"peak RSS {fmt(ve['peak_rss_mib'])} MiB")
        wm = mp.get("webmap")
        if wm:
            lines.append(f"web map {mp['size']}x{mp['size']}: {fmt(wm['mib'])} MiB, {wm['polygons_shown']} polygons "
                         f"shown, {fmt(wm['seconds'])} s")
    ry = res.get("ray")
    if ry:
        lines.append(f"segment --engine ray ({ry['inputs']} rasters of {ry['size']}^2, {ry['arch']}, 1 thread a "
                     "worker): inputs/s over the job (start-up included) / steady: " + ", ".join(
                         f"{k} {fmt(x['inputs_per_s'], 3)} / {fmt(x['steady_inputs_per_s'], 3)}"
                         for k, x in ry["runs"].items()))
    c = res.get("cli")
    if c:
        lines.append("start-up (median s): " + ", ".join(f"{k} {fmt(v['median_s'])}" for k, v in c["startup"].items()))
        t = c["text_cache"]
        lines.append(f"text prompts ({t['arch']}, {t['prompts']}): first run {fmt(t['first_s'])} s "
                     f"({t['first_prompts_encoded']} encoded), second {fmt(t['second_s'])} s "
                     f"({t['second_prompts_encoded']} encoded; hash {fmt(t['fingerprint_s'])} s), identical "
                     f"{t['identical']}")
    s3 = res.get("sam3")
    if s3:
        for size, x in s3["prompts"].items():
            lines.append(f"sam3 prompts ({size}, {x['classes']} classes, window {x['window']} -> {x['resolution']}): "
                         f"batched {fmt(x['batched_s'], 3)} s vs loop {fmt(x['loop_s'], 3)} s = {fmt(x['speedup'])}x; "
                         f"masks identical {x['masks_identical']}; image encoder {fmt(x['image_encoder_s'], 3)} s")
        for key, x in s3["segment"].items():
            lines.append(f"sam3 segment {key}: {fmt(x['mpx_per_s'], 3)} Mpx/s, peak RSS {fmt(x['peak_rss_mib'])} MiB "
                         f"(model {fmt(x['model_mib'])} MiB)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = build_parser()
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import bench_cli
        import bench_data
        import bench_fsdp
        import bench_maps
        import bench_ovss
        import bench_ray
        import bench_retrieval
        import bench_sam3
        import bench_segment
        import bench_train
        import gpu_check

        children = {**bench_train.CHILDREN, **gpu_check.CHILDREN, **bench_data.CHILDREN, **bench_ovss.CHILDREN,
                    **bench_retrieval.CHILDREN, **bench_segment.CHILDREN, **bench_maps.CHILDREN,
                    **bench_ray.CHILDREN, **bench_fsdp.CHILDREN,
                    **bench_cli.CHILDREN, **bench_sam3.CHILDREN}
        children[args.child](json.loads(args.params))
        return 0

    from common import set_threads

    set_threads(args.threads)
    parts = PARTS if not args.only else tuple(x.strip() for x in args.only.split(","))
    unknown = set(parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    cfg = config(args)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    res = {"machine": machine_info(args.device), "config": cfg, "load_before": load_snapshot(),
           "command": " ".join([Path(sys.executable).name, "benchmarks/run.py"] + (argv or sys.argv[1:])),
           "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    import bench_cli
    import bench_data
    import bench_maps
    import bench_ovss
    import bench_ray
    import bench_retrieval
    import bench_sam3
    import bench_segment
    import bench_train

    runners = {"train": bench_train.run, "data": bench_data.run, "ovss": bench_ovss.run,
               "retrieval": bench_retrieval.run, "segment": bench_segment.run, "maps": bench_maps.run,
               "ray": bench_ray.run, "cli": bench_cli.run,
               "sam3": bench_sam3.run}
    for part in parts:
        t = time.time()
        res[part] = runners[part](cfg, log)
        res.setdefault("seconds", {})[part] = round(time.time() - t, 1)
        res.setdefault("load_after", {})[part] = load_snapshot()
    res["total_seconds"] = round(time.time() - t0, 1)
    out = Path(args.out) if args.out else HERE / "results" / f"{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    if not args.out:
        (out.parent / f"latest-{args.device}{'-quick' if args.quick else ''}.json").write_text(json.dumps(res, indent=1))
    print("\n" + summary(res))
    print(f"\n{res['total_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
