"""Views cut and resized on the training device (``data.views_on_device``): the loader workers only decode.

The CPU path (:class:`~farslip.data.views.ViewMaker`) resizes the global view and every crop or object region to
S x S in the workers, and ships ``B x (1 + K) x 3 x S x S`` floats to the device. Here the workers decode the
image once and draw the same boxes (:class:`DeviceViewPlanner`: the ViewMaker's own code and random draws, with
the resizes left out); the batch carries the uint8 images and the boxes, and :func:`materialise` does the cuts,
resizes and normalisation where the model is. The function is the ViewMaker's own (torchvision's bicubic,
antialiased resize of the uint8 cut, then ``/255``, mean, std), so on the CPU the views are identical, and on a
GPU they differ only by the GPU's rounding.
"""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .views import ViewConfig, ViewMaker

#: Batch keys the planner adds; :func:`materialise` replaces them with the views of the batch contract.
PLAN_KEYS = ("pixels", "view_plan", "view_spec")
_PLACEHOLDER = torch.zeros(())  # what a deferred cut returns: fills any view slot, costs nothing


class DeviceViewPlanner(ViewMaker):
    """A ViewMaker whose cuts are recorded, not made: ``pixels`` (uint8 [3,H,W]) and ``view_plan`` (the boxes of
    the global view, then of each crop or accepted region, in slot order) replace the float views."""

    def __call__(self, record, image, seed: int) -> dict:
        self._plan: list[tuple[int, int, int, int]] = []
        sample = super().__call__(record, image, seed)
        pixels = self._pixels  # the ViewMaker's one decoded tensor (its global view is the whole of it)
        for key in ("images", "crop_images", "region_images"):
            sample.pop(key, None)
        c = self.cfg
        sample.update(pixels=pixels, view_plan=self._plan,
                      view_spec={"size": c.size, "mean": tuple(c.mean), "std": tuple(c.std),
                                 "regions": c.max_regions if c.views == "regions" else 0})
        return sample

    def _to_model(self, pixels: torch.Tensor) -> torch.Tensor:  # the global view: the whole image
        self._pixels = pixels
        self._plan.append((0, 0, int(pixels.shape[-1]), int(pixels.shape[-2])))
        return _PLACEHOLDER

    def _cut(self, pixels, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
        self._plan.append((int(left), int(top), int(right), int(bottom)))
        return _PLACEHOLDER


def resize_view(pixels: torch.Tensor, box, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One view: the uint8 cut ``box`` (left, top, right, bottom) squashed to ``size`` x ``size`` as the ViewMaker
    does it, normalised float ``[3, size, size]``."""
    left, top, right, bottom = box
    out = TF.resize(pixels[:, top:bottom, left:right], [size, size], interpolation=InterpolationMode.BICUBIC,
                    antialias=True)
    return (out.float() / 255 - mean) / std


def materialise(batch: dict, device: torch.device | str, non_blocking: bool = True) -> dict:
    """The batch contract's ``images`` and ``crop_images`` or ``region_images``, made on ``device`` from a
    planned batch; every other tensor moves there as it is. Each image crosses to the device once, as uint8."""
    spec = batch["view_spec"]
    device = torch.device(device)
    S = spec["size"]
    mean = torch.tensor(spec["mean"], device=device).view(3, 1, 1)
    std = torch.tensor(spec["std"], device=device).view(3, 1, 1)
    images, others = [], []
    for pixels, plan in zip(batch["pixels"], batch["view_plan"]):
        px = pixels.to(device, non_blocking=non_blocking)
        images.append(resize_view(px, plan[0], S, mean, std))
        others.append([resize_view(px, box, S, mean, std) for box in plan[1:]])
    out = {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
           for k, v in batch.items() if k not in PLAN_KEYS}
    out["images"] = torch.stack(images)
    if "crop_boxes" in batch:
        out["crop_images"] = torch.stack([torch.stack(v) for v in others])
    elif spec["regions"]:
        regions = torch.zeros(len(images), spec["regions"], 3, S, S, device=device)
        for b, views in enumerate(others):  # accepted regions fill the first slots, the rest is padding
            for n, v in enumerate(views):
                regions[b, n] = v
        out["region_images"] = regions
    return out


def collate_plans(samples: list[dict]) -> dict:
    """The planner's keys of a batch: lists (images differ in size), the spec once."""
    return {"pixels": [s["pixels"] for s in samples], "view_plan": [s["view_plan"] for s in samples],
            "view_spec": samples[0]["view_spec"]}


def planner_for(cfg: ViewConfig, on_device: bool) -> ViewMaker:
    """The loader's view maker: the CPU one, or the planner of device-side views."""
    return DeviceViewPlanner(cfg) if on_device else ViewMaker(cfg)
