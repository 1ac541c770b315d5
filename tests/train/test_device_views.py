"""data.views_on_device: the planner draws the ViewMaker's boxes, materialise() makes its views (identical on the
CPU, where the same function runs); a training run with the option gives the losses of the CPU path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from farslip.data import ViewConfig, ViewMaker
from farslip.data.device_views import DeviceViewPlanner, materialise
from farslip.data.loader import collate
from farslip.data.records import Record, RegionObject
from farslip.train import load_config, train

from support.fixtures import REPO, tiny_overrides


def _image(seed: int, size=(90, 70)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _tokens(texts):
    return torch.tensor([[len(t)] for t in texts])


OBJECTS = [RegionObject((0, 0, 40, 50), "ship", 1), RegionObject((10, 10, 12, 12), "car", 2),
           RegionObject((50, -20, 120, 40), "tank", 3), RegionObject((20, 20, 60, 60), None, -1, "a pier")]


@pytest.mark.parametrize("views", ["crops", "grids", "regions", "none"])
def test_views_made_on_the_device_equal_the_cpu_views(views):
    cfg = ViewConfig(size=24, views=views, num_crops=4, max_regions=3, min_region_size=8, max_region_size=None)
    cpu, planner = ViewMaker(cfg), DeviceViewPlanner(cfg)
    records = [Record("r", f"record {i}", f"caption {i}", objects=OBJECTS) for i in range(3)]
    images = [_image(i, (90 + 10 * i, 70)) for i in range(3)]  # sizes differ: the batch keeps a list of images
    want = collate([cpu(r, im, seed=11 + i) for i, (r, im) in enumerate(zip(records, images))], _tokens)
    planned = collate([planner(r, im, seed=11 + i) for i, (r, im) in enumerate(zip(records, images))], _tokens)
    assert "images" not in planned and all(p.dtype == torch.uint8 for p in planned["pixels"])
    got = materialise(planned, "cpu")
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key


def test_training_with_views_on_device_gives_the_cpu_losses(tmp_path, tiny_arch):
    losses = {}
    for on in (False, True):
        over = tiny_overrides(tmp_path / str(on), 2, steps=3)
        over["data"]["views_on_device"] = on
        cfg = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", over)
        train(cfg)
        log = (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()
        losses[on] = [json.loads(x)["total"] for x in log]
    assert len(losses[True]) == 3 and losses[True] == losses[False]
