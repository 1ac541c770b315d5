"""From one decoded image to the views of spec sections 4-5: global view, random or grid crops, object regions.

The image is decoded once per sample; every view is cut from the same uint8 tensor and resized with
torchvision. Boxes are exact in the global view's normalised coordinates. Randomness comes from a per-sample
seed, so the views of a sample do not depend on worker count, order or resumption.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from ..core.problems import Problem
from .records import Record, RegionObject

#: ``data.views``: the global view only, random crops or a grid of cells (stage 1), object regions (stage 2).
VIEWS = ("none", "crops", "grids", "regions")


@dataclass
class ViewConfig:
    size: int = 224                              # S
    views: str = "none"                          # none | crops | grids | regions
    num_crops: int = 4                           # K crops or grid cells (stage 1)
    max_regions: int = 4                         # K object regions (stage 2)
    crop_scale: tuple[float, float] = (0.3, 0.7)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    min_region_size: float = 64                  # skip objects with area under min^2 px
    max_region_size: float | None = 1024         # and (when set) over max^2 px
    region_template: str = "a satellite image of {}"
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed from (run seed, epoch, sample index): independent of workers and resumption."""
    return (seed * 1_000_003 + epoch * 7_368_787 + index * 2_654_435_761) % (2 ** 63 - 1)


class ViewMaker:
    def __init__(self, cfg: ViewConfig):
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    # -- pixels --------------------------------------------------------------------------------------------------
    def _to_model(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [3,h,w] -> squashed to S x S (bicubic, antialiased), scaled and normalised float."""
        S = self.cfg.size
        out = TF.resize(pixels, [S, S], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return (out.float() / 255 - self.mean) / self.std

    def _cut(self, pixels: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
        return self._to_model(pixels[:, top:bottom, left:right])

    # -- views ---------------------------------------------------------------------------------------------------
    def __call__(self, record: Record, image: Image.Image, seed: int) -> dict:
        pixels = TF.pil_to_tensor(image)  # decoded once; every view is cut from this tensor
        H, W = pixels.shape[-2:]
        sample = {"images": self._to_model(pixels), "caption": record.caption, "notes": list(record.notes)}
        views = self.cfg.views
        if views == "crops":
            sample["crop_images"], sample["crop_boxes"] = self.random_crops(pixels, seed)
        elif views == "grids":
            sample["crop_images"], sample["crop_boxes"] = self.grid_crops(pixels)
        elif views == "regions":
            sample.update(self.regions(pixels, record.objects, seed, record.source, sample["notes"], record.key))
        elif views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(VIEWS)}; got {views!r}")
        return sample

    def random_crops(self, pixels: torch.Tensor, seed: int):
        """K crops with torchvision's RandomResizedCrop parameters (official 'randomcrops')."""
        H, W = pixels.shape[-2:]
        crops, boxes = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(self.cfg.num_crops):
                i, j, h, w = RandomResizedCrop.get_params(pixels, scale=list(self.cfg.crop_scale),
                                                          ratio=list(self.cfg.crop_ratio))
                crops.append(self._cut(pixels, j, i, j + w, i + h))
                boxes.append([j / W, i / H, (j + w) / W, (i + h) / H])
        return torch.stack(crops), torch.tensor(boxes, dtype=torch.float32)

    def grid_crops(self, pixels: torch.Tensor):
        """A regular M x N grid of K cells (M, N the most square factor pair of K, as the official 'grids')."""
        H, W = pixels.shape[-2:]
        K = self.cfg.num_crops
        M = max(i for i in range(1, math.isqrt(K) + 1) if K % i == 0)
        N = K // M
        crops, boxes = [], []
        for r in range(M):
            for c in range(N):
                x1, x2, y1, y2 = c / N, (c + 1) / N, r / M, (r + 1) / M
                crops.append(self._cut(pixels, int(x1 * W), int(y1 * H), int(x2 * W), int(y2 * H)))
                boxes.append([x1, y1, x2, y2])
        return torch.stack(crops), torch.tensor(boxes, dtype=torch.float32)

    def regions(self, pixels: torch.Tensor, objects: list[RegionObject], seed: int, source: str, notes: list,
                key: str = ""):
        """Shuffle the objects, keep those within the area limits, at most K; pad and mask the rest."""
        H, W = pixels.shape[-2:]
        S, K = self.cfg.size, self.cfg.max_regions
        lo, hi = self.cfg.min_region_size, self.cfg.max_region_size
        order = list(range(len(objects)))
        random.Random(seed).shuffle(order)
        images = torch.zeros(K, 3, S, S)
        boxes = torch.zeros(K, 4)
        texts = [""] * K
        labels = torch.full((K,), -1, dtype=torch.long)
        valid = torch.zeros(K, dtype=torch.bool)
        n = 0
        for idx in order:
            if n >= K:
                break
            obj = objects[idx]
            x1, y1, x2, y2 = obj.box
            cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(W), x2), min(float(H), y2)
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                notes.append(Problem("bad-object", source, f"box {obj.box} outside the {W}x{H} image, clipped",
                                     f"{key} object {idx}".strip(), "bbox").to_dict())
            area = (cx2 - cx1) * (cy2 - cy1)
            left, top, right, bottom = round(cx1), round(cy1), round(cx2), round(cy2)
            if cx2 <= cx1 or cy2 <= cy1 or right <= left or bottom <= top:
                notes.append(Problem("bad-object", source, f"degenerate box {obj.box} in a {W}x{H} image, dropped",
                                     f"{key} object {idx}".strip(), "bbox").to_dict())
                continue
            if area < lo ** 2 or (hi and area > hi ** 2):
                continue
            images[n] = self._cut(pixels, left, top, right, bottom)
            boxes[n] = torch.tensor([cx1 / W, cy1 / H, cx2 / W, cy2 / H])
            texts[n] = obj.caption if obj.category is None else self.cfg.region_template.format(obj.category)
            labels[n] = obj.category_id if obj.category is not None else -1
            valid[n] = True
            n += 1
        return {"region_images": images, "region_boxes": boxes, "region_texts": texts, "region_labels": labels,
                "region_valid": valid}
