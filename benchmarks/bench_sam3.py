"""SAM 3 (``segearth-ov3``): class prompts batched against one-at-a-time, and segment's memory bound by tiles.

* ``prompts``: one window's image features, 8 class names. The loop is SegEarth-OV3's (the transcription in
  tests/support/reference_segearth_ov3.py: for each name the text encoder, the DETR encoder/decoder and the mask
  heads, then the kept instances one by one); farslip's path encodes the names once per run and sends the 8 prompts
  through the decoder as one batch. Both at the tiny size and the full size (random weights); the maps of both are
  compared (maximum difference, and the masks ``map > 0.5`` pixel for pixel).
* ``segment``: ``farslip segment --protocol segearth-ov3`` as a child process on a generated GeoTIFF: the tiny SAM 3
  on a large raster (the memory goal: 20,000 x 20,000 under 2 GB), the full-size architecture (random weights) on
  2,048 x 2,048 (goal: model size + 2 GB); peak RSS is the child's ``ru_maxrss``.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import emit, median, run_child, run_measured, timeit

CLASSES = ["building", "road", "water", "tree", "farmland", "grass", "car", "bare land"]


def child_prompts(p: dict) -> None:
    """Batched prompts against the one-at-a-time loop on one window (this process: timings and masks)."""
    import numpy as np
    import torch

    from common import set_threads
    from farslip.engine.sam3 import FusionRule, _one_window, ground, sam3_pixels, sam3_runtime, window_maps
    from farslip.models.sam3 import random_sam3, sam3_tokenizer
    from support.reference_segearth_ov3 import Processor

    set_threads(p["threads"])
    device = torch.device(p.get("device", "cpu"))
    model = random_sam3(p["size"], seed=0, device=device)
    if p["size"] == "tiny":
        with torch.no_grad():  # outputs that vary (as tests/support/sam3.py: lively_tiny_sam3)
            g = torch.Generator().manual_seed(1)
            for q in model.parameters():
                q.add_(torch.randn(q.shape, generator=g) * 0.4)
    tok = sam3_tokenizer()
    res = model.config.vision_config.backbone_config.image_size
    y, x = np.mgrid[0:p["window"], 0:p["window"]]
    window = torch.from_numpy(np.stack([x % 251, y % 241, (x * y) % 239]).astype(np.uint8)).to(device)
    autocast = bool(p.get("autocast")) and device.type == "cuda"  # SegEarth-OV3's bf16 autocast on CUDA
    cast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t0 = time.perf_counter()
    with torch.no_grad(), cast():
        vision = model.get_vision_features(pixel_values=sam3_pixels([window], res))
    if sync:
        sync()
    encoder_s = time.perf_counter() - t0
    rule = FusionRule(confidence=p["confidence"])
    runtime = sam3_runtime(model, tok, CLASSES, rule, prompt_batch=len(CLASSES), autocast=autocast)

    def batched():
        with torch.no_grad(), cast():
            return window_maps(ground(model, _one_window(vision, 0), runtime.prompts), tuple(window.shape[-2:]), rule)

    proc = Processor(model, tok, res, p["confidence"])
    proc.tokenizer = lambda texts: tok(texts).to(device)

    def loop():
        size = tuple(window.shape[-2:])
        out = torch.zeros((len(CLASSES),) + size, device=device)
        state = {"original_height": size[0], "original_width": size[1], "backbone_out": vision}
        with torch.no_grad(), cast():
            for i, name in enumerate(CLASSES):
                s = proc.set_text_prompt(name, state)
                for inst, score in zip(s["masks_logits"], s["object_score"]):
                    out[i] = torch.max(out[i], inst.squeeze() * score)
                out[i] = torch.max(out[i], s["semantic_mask_logits"].squeeze())
                out[i] = out[i] * s["presence_score"]
        return out

    a, b = batched(), loop()
    timings = {"batched": [], "loop": []}
    for _ in range(p["repeats"]):  # interleaved, so that a change of the machine's load hits both
        timings["batched"] += timeit(batched, 1, 0, sync)
        timings["loop"] += timeit(loop, 1, 0, sync)
    emit({"size": p["size"], "window": p["window"], "resolution": res, "classes": len(CLASSES),
          "device": str(device), "arithmetic": "bf16 autocast" if autocast else "fp32",
          "image_encoder_s": encoder_s, "windows_per_s": 1 / (encoder_s + median(timings["batched"])), "batched_s": median(timings["batched"]), "loop_s": median(timings["loop"]),
          "speedup": median(timings["loop"]) / median(timings["batched"]),
          "max_abs_diff": float((a - b).abs().max()), "masks_identical": bool(torch.equal(a > 0.5, b > 0.5)),
          "parameters_m": sum(q.numel() for q in model.parameters()) / 1e6})


def child_save(p: dict) -> None:
    """A random SAM 3 of ``size`` saved as the Hub's folder (config.json + model.safetensors)."""
    from farslip.models.sam3 import random_sam3

    model = random_sam3(p["size"], seed=0)
    model.save_pretrained(p["path"])
    emit({"path": p["path"], "bytes": sum(f.stat().st_size for f in Path(p["path"]).iterdir())})


def segment_run(size: int, sam3: Path, work: Path, threads: int, extra: list[str], log, device: str = "cpu") -> dict:
    from bench_segment import write_raster

    tif = work / f"scene{size}.tif"
    gen = write_raster(tif, size)
    log(f"[sam3] {size} x {size} raster written in {gen:.0f} s; segment --protocol segearth-ov3")
    out = work / f"out{size}"
    cmd = [sys.executable, "-m", "farslip", "segment", str(tif), "--protocol", "segearth-ov3", "--checkpoint",
           str(sam3), "--classes", *CLASSES[:5], "--out", str(out), "--no-progress", "--device", device, *extra]
    r = run_measured(cmd, threads)
    summary = json.loads((out / f"{tif.stem}.json").read_text())
    tif.unlink()
    return {"pixels": size * size, "segment_s": summary["seconds"], "wall_s": r["child_wall_s"],
            "mpx_per_s": size * size / summary["seconds"] / 1e6, "peak_rss_mib": r["child_peak_rss_mib"],
            "command": " ".join(cmd[1:])}


def run(cfg: dict, log) -> dict:
    out = {"prompts": {}, "segment": {}}
    for size, window in cfg["sam3_prompt_sizes"]:
        r = run_child("sam3_prompts", {"size": size, "window": window, "confidence": 0.3,
                                       "repeats": cfg["sam3_repeats"], "threads": cfg["threads"],
                                       "device": cfg["device"], "autocast": True}, cfg["threads"])
        out["prompts"][size] = r
        log(f"[sam3] prompts at the {size} size: batched {r['batched_s']:.3f} s, loop {r['loop_s']:.3f} s -> "
            f"{r['speedup']:.2f}x; masks identical {r['masks_identical']} (max diff {r['max_abs_diff']:.1e})")
    work = Path(tempfile.mkdtemp(prefix="farslip-bench-sam3-"))
    try:
        for size_name, raster, extra in cfg["sam3_segment_runs"]:
            folder = work / f"sam3-{size_name}"
            saved = run_child("sam3_save", {"size": size_name, "path": str(folder)}, cfg["threads"])
            r = segment_run(raster, folder, work, cfg["threads"], extra, log, cfg["device"])
            r["model_mib"] = saved["bytes"] / 2 ** 20
            out["segment"][f"{size_name}-{raster}"] = r
            log(f"[sam3] segment {raster}^2 with the {size_name} SAM 3: {r['mpx_per_s']:.3f} Mpx/s, peak RSS "
                f"{r['peak_rss_mib']:.0f} MiB (model {r['model_mib']:.0f} MiB)")
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


CHILDREN = {"sam3_prompts": child_prompts, "sam3_save": child_save}
