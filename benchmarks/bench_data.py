"""Stage-1 view making, per sample, one worker: the official PIL way against farslip's ViewMaker.

* ``official_pil``: decode with PIL; the global view and each of the K crops go through torchvision's PIL
  transforms (Resize to S x S bicubic, ToTensor, Normalize); each crop is a PIL ``crop`` of the decoded image
  (RandomResizedCrop parameters, area 0.3..0.7).
* ``farslip``: ``farslip.data.loader.build_sample`` -- decode once, every view cut from one uint8 tensor and
  resized with torchvision v2 on that tensor (the project's per-sample function, as a DataLoader worker runs it).
* ``farslip_gpu`` (``--device cuda`` only): decode on the CPU, the uint8 image moved to the GPU once, crops cut
  and resized there.

One thread (a DataLoader worker runs with torch's thread count set to 1). Images are generated JPEGs (textured,
quality 90) so the decoder does realistic work.
"""
from __future__ import annotations

import io
import time

from common import emit, median, run_child, set_threads
from open_clip import OPENAI_DATASET_STD

S, K = 224, 4
SCALE, RATIO = (0.3, 0.7), (3 / 4, 4 / 3)


def make_jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        f1, f2 = rng.uniform(20, 120, 2)
        field = 128 + 60 * np.sin(xx / f1 + i) * np.cos(yy / f2) + rng.normal(0, 18, (size, size))
        rgb = np.stack([field, 0.8 * field + 30, 255 - field], axis=-1).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def official_views_fn():
    import torch
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode, RandomResizedCrop

    from open_clip import OPENAI_DATASET_MEAN as OPENAI_MEAN, OPENAI_DATASET_STD as OPENAI_STD

    tf = T.Compose([T.Resize((S, S), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                    T.Normalize(OPENAI_MEAN, OPENAI_STD)])

    def views(data: bytes, seed: int):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        W, H = img.size
        out = {"images": tf(img)}
        crops, boxes = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(K):
                i, j, h, w = RandomResizedCrop.get_params(img, scale=list(SCALE), ratio=list(RATIO))
                crops.append(tf(img.crop((j, i, j + w, i + h))))
                boxes.append([j / W, i / H, (j + w) / W, (i + h) / H])
        out["crop_images"], out["crop_boxes"] = torch.stack(crops), torch.tensor(boxes)
        return out

    return views


def farslip_views_fn():
    from farslip.data.loader import build_sample
    from farslip.data.records import Record
    from farslip.data.views import ViewConfig, ViewMaker

    vm = ViewMaker(ViewConfig(size=S, views="crops", num_crops=K, crop_scale=SCALE, crop_ratio=RATIO))

    def views(data: bytes, seed: int):
        return build_sample(Record("bench", "sample 0", "a caption", image_bytes=data), vm, seed)

    return views


def farslip_gpu_views_fn():
    """Decode on the CPU, then one host-to-device copy of the uint8 image; crops and resizes on the GPU."""
    import torch
    from PIL import Image
    from torchvision.transforms import InterpolationMode, RandomResizedCrop
    from torchvision.transforms.v2 import functional as TF

    from open_clip import OPENAI_DATASET_MEAN as OPENAI_MEAN, OPENAI_DATASET_STD as OPENAI_STD

    mean = torch.tensor(OPENAI_MEAN, device="cuda").view(3, 1, 1)
    std = torch.tensor(OPENAI_STD, device="cuda").view(3, 1, 1)

    def to_model(px):
        out = TF.resize(px, [S, S], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return (out.float() / 255 - mean) / std

    def views(data: bytes, seed: int):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        px = TF.pil_to_tensor(img).pin_memory().to("cuda", non_blocking=True)
        H, W = px.shape[-2:]
        out = {"images": to_model(px)}
        crops, boxes = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(K):
                i, j, h, w = RandomResizedCrop.get_params(px, scale=list(SCALE), ratio=list(RATIO))
                crops.append(to_model(px[:, i:i + h, j:j + w]))
                boxes.append([j / W, i / H, (j + w) / W, (i + h) / H])
        out["crop_images"], out["crop_boxes"] = torch.stack(crops), torch.tensor(boxes)
        return out

    return views


def child(p: dict) -> None:
    import torch

    set_threads(1)
    jpegs = make_jpegs(p["images"], p["image_size"])
    fns = {"official_pil": official_views_fn(), "farslip": farslip_views_fn()}
    if p["device"] == "cuda":
        fns["farslip_gpu"] = farslip_gpu_views_fn()
    sync = torch.cuda.synchronize if p["device"] == "cuda" else (lambda: None)

    def one_pass(fn):
        for n, data in enumerate(jpegs):
            fn(data, n)
        sync()

    for fn in fns.values():  # warm-up
        one_pass(fn)
    times = {k: [] for k in fns}
    for r in range(p["repeats"]):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t = time.perf_counter()
            one_pass(fns[k])
            times[k].append(time.perf_counter() - t)
    # same crop boxes, pixel differences between the PIL path and the tensor path (normalised units -> 0..255 levels)
    a, b = fns["official_pil"](jpegs[0], 7), fns["farslip"](jpegs[0], 7)
    std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    diff = {"boxes_equal": bool(torch.equal(a["crop_boxes"], b["crop_boxes"])),
            "global_max_levels": float(((a["images"] - b["images"]) * std).abs().max() * 255),
            "crops_max_levels": float(((a["crop_images"] - b["crop_images"]) * std).abs().max() * 255),
            "crops_mean_levels": float(((a["crop_images"] - b["crop_images"]) * std).abs().mean() * 255)}
    emit({"samples_per_s": {k: p["images"] / median(t) for k, t in times.items()}, "times": times,
          "jpeg_kib": sum(map(len, jpegs)) / len(jpegs) / 1024, "pixels": diff})


def run(cfg: dict, log) -> dict:
    out = {}
    for size in cfg["data_sizes"]:
        log(f"[data] {size}x{size} JPEGs, {cfg['data_images']} images x {cfg['data_repeats']} passes, 1 thread")
        r = run_child("data", {"images": cfg["data_images"], "image_size": size, "repeats": cfg["data_repeats"],
                               "device": cfg["device"]}, 1)
        r["speedup"] = {k: v / r["samples_per_s"]["official_pil"] for k, v in r["samples_per_s"].items()
                        if k != "official_pil"}
        log(f"[data] {size}: samples/s " + ", ".join(f"{k} {v:.1f}" for k, v in r["samples_per_s"].items())
            + f"; speedup {r['speedup']}")
        out[str(size)] = r
    return out


CHILDREN = {"data": child}
