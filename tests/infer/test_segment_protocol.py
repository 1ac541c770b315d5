"""``farslip segment --protocol``: an evaluation protocol's settings on a raster (the raster is not fitted to 448),
explicit options still winning; the tiled map equals the engine run once over the whole image."""
from __future__ import annotations

import numpy as np
import rasterio
import torch
from PIL import Image

import farslip
from farslip.engine.protocols import get_protocol
from farslip.engine import (OVSS_TEMPLATES, class_scores, name_embeddings, predict_classes, prepare_image, query_table,
                            sliding_window_logits)
from farslip.engine.runtime import protocol_runtime
from farslip.infer.segmentation import SegmentOptions


def test_protocol_settings_with_explicit_options_kept():
    opts = SegmentOptions(protocol="farslip").resolved()
    assert (opts.cls_lambda, opts.window, opts.stride, opts.window_to_model_size) == (0.0, 224, 112, True)
    assert opts.threshold == 0.0 and opts.half_model == "cuda" and opts.scale == 1.0
    se = SegmentOptions(protocol="segearth", threshold=0.2).resolved()
    assert (se.cls_lambda, se.threshold, se.window, se.window_to_model_size) == (-0.3, 0.2, 224, False)
    own = SegmentOptions(protocol="segearth", window=48, cls_lambda=0.0).resolved()  # given values win
    assert (own.window, own.stride, own.cls_lambda, own.threshold) == (48, 112, 0.0, 0.0)
    plain = SegmentOptions().resolved()
    assert (plain.cls_lambda, plain.window, plain.window_to_model_size) == (-0.3, None, False)  # raster defaults
    assert plain.resolved() == plain  # resolving twice changes nothing


def test_segment_with_the_farslip_protocol_equals_the_engine(tmp_path, tiny_model):
    model, _, tokenizer = tiny_model
    model.eval()
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    classes = ["water,river", "forest", "building,roof"]
    # windows of 24 px, not the tiny model's 32: every window goes through the resize path
    res = farslip.segment(tmp_path / "scene.png", classes, model=model, tokenizer=tokenizer, out=tmp_path / "o",
                          protocol="farslip", window=24, stride=12, block=32, progress=False)[0]
    proto = get_protocol("farslip", {"crop": 24, "stride": 12})
    runtime = protocol_runtime(model, proto)
    names, owner = query_table([c.split(",") for c in classes])
    text = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES)
    x = prepare_image(rgb, None)  # the protocol's pixels: its mean and std, not the model's
    [logits] = sliding_window_logits(model, [x], text, **runtime.window_options(proto))
    want = predict_classes(class_scores(logits, owner, 3), 0.0, 0).numpy()
    with rasterio.open(res.geotiff) as f:
        got = f.read(1)
    assert (got == want).mean() == 1.0
    plain = farslip.segment(tmp_path / "scene.png", classes, model=model, tokenizer=tokenizer,
                            out=tmp_path / "p", window=24, stride=12, block=32, progress=False)[0]
    with rasterio.open(plain.geotiff) as f:
        assert (f.read(1) != got).any()   # the raster defaults (CLS-bias, no resize) are another protocol


def test_cli_segment_protocol(tmp_path, tiny_model):
    from farslip.cli import main

    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    assert main(["segment", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--classes", "road",
                 "building,roof", "--out", str(tmp_path / "o"), "--no-progress", "--protocol", "segearth",
                 "--window", "32", "--stride", "16", "--threshold", "0.2"]) == 0
    assert (tmp_path / "o" / "a.tif").exists()
