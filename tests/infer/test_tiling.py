"""Tiled segmentation equals one pass over the whole image: the windows, the overlap average and the resize."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import from_origin

import farslip
from farslip.engine.windows import sliding_window_logits, window_boxes, window_spans
from farslip.infer.raster import Window, open_raster, read_rgb
from farslip.infer.scene import SceneTiles
from farslip.infer.tiling import axis_tiles, linear_source, tile_boxes, tile_step


def test_window_spans_make_the_window_grid():
    for h, w in ((448, 448), (448, 300), (100, 150), (333, 97)):
        assert window_boxes(h, w, 64, 32) == [(a, b, c, d) for a, b in window_spans(h, 64, 32)
                                              for c, d in window_spans(w, 64, 32)]


def test_linear_source_matches_interpolate():
    x = torch.randn(1, 1, 37, 1)
    for n_out in (11, 37, 80):
        ref = F.interpolate(x, size=(n_out, 1), mode="bilinear", align_corners=False)[0, 0, :, 0]
        i0, i1, w1 = linear_source(n_out, 37, 0, n_out)
        got = x[0, 0, i0, 0] + (x[0, 0, i1, 0] - x[0, 0, i0, 0]) * w1
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)  # torch computes the weights in float32


def test_tile_step_lines_up_with_strides():
    assert tile_step(1024, 112, 1.0) == 1008
    assert tile_step(50, 112, 1.0) == 112
    assert tile_step(1024, 112, 0.5) == 1120  # 5 strides of the half-size grid


@pytest.mark.parametrize("size,scaled,step", [((70, 100), (70, 100), 32), ((70, 100), (35, 50), 40),
                                              ((61, 45), (91, 67), 20), ((30, 20), (30, 20), 16)])
def test_tiles_reproduce_the_single_pass(tiny_model, size, scaled, step):
    """Per tile: the windows of the whole grid that touch it, the region they cover, the rows it resamples."""
    model, _, _ = tiny_model
    model.eval()
    g = torch.Generator().manual_seed(0)
    query = F.normalize(torch.randn(5, model.text_projection.shape[1], generator=g), dim=-1)
    image = torch.randn(3, *scaled, generator=g)  # the rescaled raster
    with torch.no_grad():
        full = sliding_window_logits(model, [image], query, crop=32, stride=16)[0]
        full = F.interpolate(full[None], size=size, mode="bilinear", align_corners=False)[0]
        got = torch.empty_like(full)
        for rows in axis_tiles(size[0], scaled[0], 32, 16, step):
            for cols in axis_tiles(size[1], scaled[1], 32, 16, step):
                (ry0, ry1), (rx0, rx1) = rows.region, cols.region
                region = image[:, ry0:ry1, rx0:rx1]
                lg = sliding_window_logits(model, [region], query, crop=32, stride=16,
                                           boxes=[tile_boxes(rows, cols)])[0]
                got[:, rows.out[0]:rows.out[1], cols.out[0]:cols.out[1]] = cols.take(rows.take(lg, 1), 2)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def _geotiff(path, arr):
    with rasterio.open(path, "w", driver="GTiff", height=arr.shape[1], width=arr.shape[2], count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 1, 1)) as dst:
        dst.write(arr)
    return path


@pytest.mark.parametrize("dtype, bands", [("uint8", None), ("uint16", (4, 3, 2))])
def test_scene_pixels_are_the_resize_of_the_whole_raster(tmp_path, dtype, bands):
    """Each tile's region of the rescaled grid is OpenCV's resize of the whole 8-bit image there (a 16-bit
    multi-band raster: its percentile stretch first, then the resize, as the evaluation of its 8-bit rendition);
    GDAL's bilinear read, the explicit alternative, gives other pixels."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 4000 if dtype == "uint16" else 256, (4 if bands else 3, 83, 121)).astype(dtype)
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=83, width=121, count=arr.shape[0], dtype=dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 1, 1)) as dst:
        dst.write(arr)
    r = open_raster(tmp_path / "s.tif", bands)
    try:
        eight_bit = read_rgb(r, Window(0, 0, 121, 83)).transpose(1, 2, 0)
        for scale in (0.45, 1.7):
            scene = SceneTiles(r, 32, 16, scale, block=40)
            whole = cv2.resize(eight_bit, scene.scaled[::-1], interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
            gdal = SceneTiles(r, 32, 16, scale, block=40, resampling="gdal-bilinear")
            assert len(scene) > 4
            for tile in scene:
                (y0, y1), (x0, x1) = tile.rows.region, tile.cols.region
                np.testing.assert_array_equal(scene.pixels(tile), whole[:, y0:y1, x0:x1])
            assert any((gdal.pixels(t) != scene.pixels(t)).any() for t in scene)
    finally:
        r.close()


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_segment_tiles_equal_one_pass(tmp_path, tiny_model, scale):
    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    src = _geotiff(tmp_path / "s.tif", np.random.default_rng(1).integers(0, 255, (3, 90, 130), dtype=np.uint8))
    maps = {}
    for block in (4096, 40):
        res = farslip.segment(src, ["a", "b", "c"], checkpoint=ckpt, out=tmp_path / str(block), block=block,
                              scale=scale, progress=False)[0]
        with rasterio.open(res.geotiff) as f:
            maps[block] = f.read(1)
    # same windows, same sums; only a near-tie flipped by a different encoder batch could differ
    assert np.mean(maps[4096] == maps[40]) > 0.999
