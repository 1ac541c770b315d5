"""Fixtures of the hostile-input suite, all made by code: a tiny checkpoint, small georeferenced rasters."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_arch):
    import torch

    import farslip

    torch.manual_seed(0)
    model, *_ = farslip.load_model(tiny_arch)
    return farslip.save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def write_geotiff(path, arr: np.ndarray, nodata=None):
    count, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=arr.dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5), nodata=nodata) as dst:
        dst.write(arr)
    return path


@pytest.fixture
def scene(tmp_path):
    """A 3-band 8-bit GeoTIFF, 40 x 48 px, in its own input folder."""
    arr = np.random.default_rng(0).integers(1, 255, (3, 40, 48), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    return write_geotiff(tmp_path / "in" / "scene.tif", arr)
