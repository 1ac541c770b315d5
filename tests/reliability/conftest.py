"""Fixtures of the hostile-input suite, all made by code: a tiny checkpoint, small georeferenced rasters."""
from __future__ import annotations

import numpy as np
import pytest

from support.hostile import write_geotiff


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_arch):
    import torch

    import farslip

    torch.manual_seed(0)
    model, *_ = farslip.load_model(tiny_arch)
    return farslip.save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def scene(tmp_path):
    """A 3-band 8-bit GeoTIFF, 40 x 48 px, in its own input folder."""
    arr = np.random.default_rng(0).integers(1, 255, (3, 40, 48), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    return write_geotiff(tmp_path / "in" / "scene.tif", arr)
