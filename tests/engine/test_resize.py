"""Images read and resized as mmcv does it (OpenCV), held against cv2 called the way mmcv calls it."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from farslip.engine.images import fit_image, read_rgb_like_mmcv, resize_bilinear, resize_bilinear_part
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


def _cases(n: int, seed: int = 0):
    """Source and destination sizes: random shrinks and enlargements, the exact halves and doubles OpenCV routes
    through other kernels, one axis kept, single rows and columns; three channels and one."""
    rng = np.random.default_rng(seed)
    fixed = [((64, 48), (32, 24)), ((37, 29), (74, 58)), ((50, 80), (50, 33)), ((1, 90), (3, 41)), ((90, 1), (7, 1)),
             ((300, 200), (448, 299)), ((97, 131), (48, 65))]
    for i in range(n):
        src, dst = fixed[i] if i < len(fixed) else (tuple(rng.integers(1, 160, 2)), tuple(rng.integers(1, 240, 2)))
        yield tuple(map(int, src)), tuple(map(int, dst)), 1 if i % 5 == 4 else 3


def test_a_window_of_the_resize_is_the_whole_resize_bit_for_bit():
    """Any rectangle of OpenCV's resize, computed from only the source pixels it needs (the span plus one pixel of
    margin), is the whole image's resize there -- every value equal, for the whole range of sizes."""
    rng = np.random.default_rng(1)
    for (H, W), (h, w), c in _cases(150):
        img = rng.integers(0, 256, (H, W, c), dtype=np.uint8)
        whole = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c)
        r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        r1, c1 = int(rng.integers(r0 + 1, h + 1)), int(rng.integers(c0 + 1, w + 1))
        reads = []

        def read(y0, y1, x0, x1):
            reads.append((y0, y1, x0, x1))
            return img[y0:y1, x0:x1]

        part = resize_bilinear_part(read, (H, W), (h, w), (r0, r1), (c0, c1), row_block=5)
        np.testing.assert_array_equal(part, whole[r0:r1, c0:c1], err_msg=f"{(H, W)} -> {(h, w)}")
        (y0, y1, x0, x1), = reads
        assert y1 - y0 <= (r1 - r0) * H / h + 3 and x1 - x0 <= (c1 - c0) * W / w + 3  # the span, its two taps


def test_tiles_of_the_resize_join_without_seams():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (211, 157, 3), dtype=np.uint8)
    for size in ((94, 70), (400, 301)):
        whole = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR)
        joined = np.concatenate([np.concatenate([
            resize_bilinear_part(lambda y0, y1, x0, x1: img[y0:y1, x0:x1], img.shape[:2], size, (r, min(r + 37, size[0])),
                                 (c, min(c + 29, size[1]))) for c in range(0, size[1], 29)], axis=1)
            for r in range(0, size[0], 37)])
        np.testing.assert_array_equal(joined, whole)


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
