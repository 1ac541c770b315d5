"""farslip segment caps GDAL's block cache (bounded memory on huge rasters) and leaves a user's setting alone."""
from __future__ import annotations

import numpy as np
import rasterio
import rasterio.env
from rasterio.transform import from_origin

import farslip
import farslip.infer.scene as scene  # where segment's tiles meet the encoder


def _scene(path):
    arr = np.random.default_rng(0).integers(0, 255, (3, 60, 80), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=60, width=80, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 0.5, 0.5)) as dst:
        dst.write(arr)
    return path


def _cache_settings_seen(tmp_path, monkeypatch, tiny_model, **kw):
    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    seen = []
    original = scene.sliding_window_logits

    def spy(*args, **kwargs):
        seen.append(rasterio.env.getenv().get("GDAL_CACHEMAX"))
        return original(*args, **kwargs)

    monkeypatch.setattr(scene, "sliding_window_logits", spy)
    res = farslip.segment(_scene(tmp_path / "s.tif"), ["a", "b"], checkpoint=ckpt, out=tmp_path / "out",
                          progress=False, **kw)[0]
    with rasterio.open(res.geotiff) as f:
        return seen, f.read(1)


def test_segment_caps_the_gdal_cache(tmp_path, monkeypatch, tiny_model):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    seen, capped = _cache_settings_seen(tmp_path, monkeypatch, tiny_model)
    assert seen and all(v == 256 for v in seen)
    seen, uncapped = _cache_settings_seen(tmp_path, monkeypatch, tiny_model, gdal_cache_mb=0)
    assert seen and all(v is None for v in seen)
    assert np.array_equal(capped, uncapped)  # the cache changes memory, never the map


def test_segment_leaves_a_user_gdal_cachemax_alone(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("GDAL_CACHEMAX", "64")
    seen, _ = _cache_settings_seen(tmp_path, monkeypatch, tiny_model)
    assert seen and all(v is None for v in seen)
