"""Images read and resized as mmcv does it (OpenCV), held against cv2 called the way mmcv calls it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from farslip.engine.images import fit_image, read_rgb_like_mmcv, resize_bilinear
from farslip.engine.images import rescaled_size as fit_size


def test_fit_size_by_hand():
    assert fit_size(1024, 1024, 448) == (448, 448)
    assert fit_size(2160, 4096, 448) == (236, 448)        # 2160 * 448/4096 = 236.25
    assert fit_size(300, 200, 448) == (448, 299)          # small images are enlarged too (mmcv imrescale)
    assert fit_size(1000, 250, 448) == (448, 112)         # elongated: the short side is far under a window
    assert fit_size(512, 512, (448, 448)) == (448, 448)


@pytest.mark.parametrize("shape, size", [((97, 131, 3), (48, 65)), ((40, 30, 3), (448, 336)), ((64, 64), (33, 17))])
def test_resize_is_opencv_bilinear_exactly(shape, size):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    got = resize_bilinear(img, size)
    want = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    assert got.dtype == np.uint8


def test_opencv_fixed_point_differs_from_float_bilinear():
    """Why OpenCV itself is called: a float bilinear resize, rounded, misses OpenCV on some values by one."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    size = fit_size(300, 200, 448)
    ours = fit_image(img, 448).astype(int)
    t = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    flt = F.interpolate(t, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    diff = np.abs(flt[0].permute(1, 2, 0).numpy().astype(int) - ours)
    assert diff.max() == 1 and 0.01 < (diff > 0).mean() < 0.5


def test_reading_is_cv2_imdecode_colour(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_rgb_like_mmcv(tmp_path / "rgb.png"), rgb)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb_like_mmcv(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, -1))
    rgba = rng.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb_like_mmcv(tmp_path / "rgba.png"), rgba[..., :3])
    Image.fromarray(rgb).save(tmp_path / "q.jpg", quality=80)
    bgr = cv2.imdecode(np.fromfile(str(tmp_path / "q.jpg"), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_rgb_like_mmcv(tmp_path / "q.jpg"), bgr[..., ::-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert read_rgb_like_mmcv(tmp_path / "broken.png") is None
    assert read_rgb_like_mmcv(tmp_path / "absent.png") is None
