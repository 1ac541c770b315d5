"""OVSS inference at 448 px with 224 px windows, stride 112: batched windows against one window at a time.

Both paths do the whole per-image work of the evaluation after loading: window logits, overlap average,
upsampling to the original size, softmax over names, synonym max, argmax (``class_scores`` + ``predict_classes``).
``batched``: ``farslip.eval.ovss.sliding_window_logits`` on 4 images at a time (the evaluation's default images
per step) with its default windows per encoder call (64 on a GPU; about 1024 token rows, i.e. 5 ViT-B/16 windows,
on the CPU). ``batched_64``: the same with 64 windows per call on the CPU too (the former default), for the record.
``one_window``: SegEarth-OV's loop (``reference_ovss.py``). The masks are compared pixel for pixel.
"""
from __future__ import annotations

import time

from common import emit, median, run_child, set_threads


def make_images(n: int, size: int = 512, seed: int = 0):
    import numpy as np
    import torch

    from farslip.eval.ovss import prepare_image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = []
    for i in range(n):
        f1, f2 = rng.uniform(20, 90, 2)
        field = 128 + 80 * np.sin(xx / f1 + i) * np.cos(yy / f2) + rng.normal(0, 10, (size, size))
        rgb = np.stack([field, 255 - field, 0.5 * field + 40], axis=-1).clip(0, 255).astype(np.uint8)
        out.append(prepare_image(torch.from_numpy(rgb), 448))
    return out


def child(p: dict) -> None:
    import torch
    import torch.nn.functional as F

    import farslip
    from farslip.eval.ovss import class_scores, predict_classes, sliding_window_logits
    from reference_ovss import segearth_slide

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
        return [predict_classes(class_scores(lg, owner, C, out_size=ori, logit_scale=50.0)) for lg in logits_list]

    def batched(wbs=None):
        out = []
        for s in range(0, len(images), p["batch"]):
            out += masks_of(sliding_window_logits(model, images[s:s + p["batch"]], query, crop=224, stride=112,
                                                  window_batch_size=wbs))
        sync()
        return out

    def one_window():
        out = masks_of([segearth_slide(model, img, query, 224, 112) for img in images])
        sync()
        return out

    fns = {"batched": batched, "one_window": one_window}
    if device.type == "cpu":
        fns["batched_64"] = lambda: batched(64)
    with torch.no_grad():
        masks = {k: f() for k, f in fns.items()}  # warm-up + masks
        times = {k: [] for k in fns}
        for r in range(p["repeats"]):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
    same = all(torch.equal(a, b) for k in fns for a, b in zip(masks[k], masks["one_window"]))
    differing = sum(int((a != b).sum()) for a, b in zip(masks["batched"], masks["one_window"]))
    classes_used = len(torch.unique(torch.stack(masks["batched"])))
    emit({"images_per_s": {k: p["images"] / median(t) for k, t in times.items()}, "times": times,
          "masks_identical": same, "differing_pixels": differing, "classes_in_masks": classes_used,
          "windows_per_image": 9})


def run(cfg: dict, log) -> dict:
    log(f"[ovss] {cfg['ovss_arch']} at 448 px (224/112 windows), {cfg['ovss_images']} images x "
        f"{cfg['ovss_repeats']} repeats")
    r = run_child("ovss", {"arch": cfg["ovss_arch"], "images": cfg["ovss_images"], "repeats": cfg["ovss_repeats"],
                           "batch": 4, "classes": 16, "device": cfg["device"], "threads": cfg["threads"]},
                  cfg["threads"])
    r["speedup"] = r["images_per_s"]["batched"] / r["images_per_s"]["one_window"]
    r["speedup_all"] = {k: v / r["images_per_s"]["one_window"] for k, v in r["images_per_s"].items()}
    log(f"[ovss] images/s batched {r['images_per_s']['batched']:.3f}, one window "
        f"{r['images_per_s']['one_window']:.3f}: {r['speedup']:.2f}x; masks identical {r['masks_identical']}")
    return r


CHILDREN = {"ovss": child}
