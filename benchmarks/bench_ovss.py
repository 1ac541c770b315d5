"""OVSS inference at 448 px with 224 px windows, stride 112: batched windows against one window at a time.

Both paths do the whole per-image work of the evaluation after loading: window logits, overlap average,
upsampling to the original size, softmax over names, synonym max, argmax (``class_scores`` + ``predict_classes``).

* ``one_window``: SegEarth-OV's loop (``reference_ovss.py``) under the protocol's precision (fp32 on the CPU,
  float16 autocast on CUDA as the official scripts' ``precision=amp``);
* ``batched``: ``farslip.engine.sliding_window_logits`` on 4 images at a time (the evaluation's default images
  per step) with its default windows per encoder call (64 on a GPU; about 1024 token rows, i.e. 5 ViT-B/16
  windows, on the CPU), same precision -- masks must be identical;
* CPU only: ``batched_64`` (64 windows per call, the former CPU default), and the opt-in ``amp="bf16"`` mode as
  ``batched_bf16`` with ``one_window_bf16`` (the loop under the same autocast) beside it; their masks are compared
  with the fp32 loop's pixel by pixel (agreement, not identity);
* the machine's matrix-product ceiling (a 2048^3 GEMM in fp32 and bf16) and the encoder FLOPs of one image
  (torch's FlopCounterMode), so that each variant's achieved GFLOP/s can be set against what the CPU can do at all.
"""
from __future__ import annotations

import time

from common import emit, median, run_child, set_threads


def make_images(n: int, size: int = 512, seed: int = 0):
    import numpy as np
    import torch

    from farslip.engine.images import prepare_image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for i in range(n):
        f1, f2 = rng.uniform(20, 90, 2)
        field = 128 + 80 * np.sin(xx / f1 + i) * np.cos(yy / f2) + rng.normal(0, 10, (size, size))
        rgb = np.stack([field, 255 - field, 0.5 * field + 40], axis=-1).clip(0, 255).astype(np.uint8)
        out.append(prepare_image(torch.from_numpy(rgb), 448))
    return out


def gemm_ceiling(device, dtype_name: str, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n^3 matrix product: what the math library reaches at best on this device and dtype."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / median(ts) / 1e9


def encoder_gflop_per_image(model, images, query) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from support.reference_ovss import segearth_slide

    # with gradients enabled nn.MultiheadAttention leaves its fused inference kernel, which the counter cannot see
    # (it would miss the attention projections); the arithmetic is the same
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        segearth_slide.__wrapped__(model, images[0], query, 224, 112)
    return counter.get_total_flops() / 1e9


def child(p: dict) -> None:
    import torch
    import torch.nn.functional as F

    import farslip
    from farslip.models.precision import autocast_for, cpu_has_native_bf16
    from farslip.engine import class_scores, predict_classes, sliding_window_logits
    from support.reference_ovss import segearth_slide

    set_threads(p["threads"])
    device = torch.device(p["device"])
    torch.manual_seed(0)
    model, _, _, _ = farslip.load_model(p["arch"], device=str(device))
    model.eval()
    C = p["classes"]
    query = F.normalize(torch.randn(C, model.text_projection.shape[1], generator=torch.Generator().manual_seed(1)),
                        dim=-1).to(device)
    owner = torch.arange(C)
    images = [x.to(device) for x in make_images(p["images"])]
    ori = (512, 512)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def masks_of(logits_list):
        return [predict_classes(class_scores(lg.float(), owner, C, out_size=ori, logit_scale=50.0))
                for lg in logits_list]

    def batched(wbs=None, amp=None):
        out = []
        for s in range(0, len(images), p["batch"]):
            out += masks_of(sliding_window_logits(model, images[s:s + p["batch"]], query, crop=224, stride=112,
                                                  window_batch_size=wbs, amp=amp))
        sync()
        return out

    def one_window(amp=None):
        with autocast_for(model, amp):
            out = masks_of([segearth_slide(model, img, query, 224, 112) for img in images])
        sync()
        return out

    fns = {"batched": batched, "one_window": one_window}
    bf16 = device.type == "cpu" and cpu_has_native_bf16() is not False
    if device.type == "cpu":
        fns["batched_64"] = lambda: batched(64)
    if bf16:
        fns["batched_bf16"] = lambda: batched(amp="bf16")
        fns["one_window_bf16"] = lambda: one_window("bf16")
    with torch.no_grad():
        masks = {k: f() for k, f in fns.items()}  # warm-up + masks
        times = {k: [] for k in fns}
        for r in range(p["repeats"]):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
        gflop = encoder_gflop_per_image(model, images, query)
        ceiling = {dt: gemm_ceiling(device, dt) for dt in (["float32", "bfloat16"] if bf16 else ["float32"])}

    def agreement(k, ref="one_window"):
        same = sum(int((a == b).sum()) for a, b in zip(masks[k], masks[ref]))
        return same / sum(m.numel() for m in masks[ref])

    exact = [k for k in fns if not k.endswith("_bf16")]
    ips = {k: p["images"] / median(t) for k, t in times.items()}
    emit({"images_per_s": ips, "times": times,
          "masks_identical": all(torch.equal(a, b) for k in exact for a, b in zip(masks[k], masks["one_window"])),
          "differing_pixels": sum(int((a != b).sum()) for a, b in zip(masks["batched"], masks["one_window"])),
          "agreement_with_one_window": {k: agreement(k) for k in fns},
          "bf16_batched_vs_bf16_loop_agreement": agreement("batched_bf16", "one_window_bf16") if bf16 else None,
          "classes_in_masks": len(torch.unique(torch.stack(masks["batched"]))),
          "windows_per_image": 9, "encoder_gflop_per_image": gflop,
          "achieved_gflop_per_s": {k: v * gflop for k, v in ips.items()},
          "gemm_ceiling_gflop_per_s": ceiling})


def run(cfg: dict, log) -> dict:
    log(f"[ovss] {cfg['ovss_arch']} at 448 px (224/112 windows), {cfg['ovss_images']} images x "
        f"{cfg['ovss_repeats']} repeats")
    r = run_child("ovss", {"arch": cfg["ovss_arch"], "images": cfg["ovss_images"], "repeats": cfg["ovss_repeats"],
                           "batch": 4, "classes": 16, "device": cfg["device"], "threads": cfg["threads"]},
                  cfg["threads"])
    base = r["images_per_s"]["one_window"]
    r["speedup"] = r["images_per_s"]["batched"] / base
    r["speedup_all"] = {k: v / base for k, v in r["images_per_s"].items()}
    log(f"[ovss] images/s batched {r['images_per_s']['batched']:.3f}, one window {base:.3f}: {r['speedup']:.2f}x; "
        f"masks identical {r['masks_identical']}")
    if "batched_bf16" in r["images_per_s"]:
        log(f"[ovss] bf16 batched {r['speedup_all']['batched_bf16']:.2f}x the fp32 loop, "
            f"{100 * r['agreement_with_one_window']['batched_bf16']:.2f}% of pixels agree")
    fp32_ceiling = r["gemm_ceiling_gflop_per_s"]["float32"]
    log(f"[ovss] encoder {r['encoder_gflop_per_image']:.0f} GFLOP/image; fp32 loop "
        f"{r['achieved_gflop_per_s']['one_window']:.0f} GFLOP/s, fp32 GEMM ceiling {fp32_ceiling:.0f} GFLOP/s")
    return r


CHILDREN = {"ovss": child}
