"""Each OVSS protocol held against a straightforward transcription of its official loop (tests/support/reference_official_ovss.py):
RS-OVSS's CustomizedSegmentation for ``farslip`` -- elongated images included, where windows are resized to the
model's input -- and SegEarth-OV's SegEarthSegmentation for ``segearth``, with and without SimFeatUp; logits,
label maps and mIoU, on a tiny model."""
from __future__ import annotations

import copy
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import farslip
import farslip.eval as fe
from farslip.engine.protocols import get_protocol
from farslip.engine.simfeatup import SimFeatUp
from farslip.engine import class_scores, predict_classes, query_table, sliding_window_logits
from farslip.engine.runtime import protocol_runtime
from farslip.eval.ovss import SegmentationSamples
from support.reference_official_ovss import (class_queries, mmcv_load_resize, query_features, rs_ovss_image,
                                             segearth_image)

CLASSES = ["background", "building,roof,house", "road", "tree,forest"]
#: (rows, cols): ordinary, elongated (448-fit short side 10 px < a window: the window-resize path), tall, square
SIZES = [(40, 60), (90, 18), (70, 33), (64, 64)]


def _dataset(root, sizes=SIZES, suffix=".png", threshold=0.3, background=2):
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2] //= 3  # some structure for the classes to follow
        Image.fromarray(img).save(root / "img" / f"im{i}{suffix}", quality=90)
        Image.fromarray(rng.integers(0, len(CLASSES), (h, w), dtype=np.uint8)).save(root / "ann" / f"im{i}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return fe.OVSSDataset(str(root / "img"), str(root / "ann"), str(root / "classes.txt"), name="toy",
                          img_suffix=suffix, prob_threshold=threshold, background_index=background)


def _engine(model, tokenizer, ds, proto, path):
    """farslip's engine on one image, composed as farslip.eval.ovss runs it."""
    runtime = protocol_runtime(model, proto)
    names, owner = query_table(ds.classes())
    queries = fe.name_embeddings(runtime.model, tokenizer, names, fe.OVSS_TEMPLATES)
    sample = SegmentationSamples([(path, path.replace("/img/", "/ann/").rsplit(".", 1)[0] + ".png")], ds,
                                 proto.scale)[0]
    [logits] = sliding_window_logits(runtime.model, [sample["image"]], queries, window_batch_size=3,
                                     **runtime.window_options(proto))
    up = torch.nn.functional.interpolate(logits[None], size=sample["ori_size"], mode="bilinear")
    scores = class_scores(logits, owner, len(CLASSES), out_size=sample["ori_size"], logit_scale=proto.logit_scale)
    thr, bg = proto.dataset_rule(ds)
    return up[0].float(), scores.float(), predict_classes(scores, thr, bg)


def _mmseg_miou(preds_and_labels, n_cls, ignore=255):
    inter, union = torch.zeros(n_cls), torch.zeros(n_cls)
    for pred, gt in preds_and_labels:
        mask = gt != ignore
        p, l = pred[mask].float(), gt[mask].float()
        hi = torch.histc(p[p == l], bins=n_cls, min=0, max=n_cls - 1)
        inter += hi
        union += torch.histc(p, bins=n_cls, min=0, max=n_cls - 1) + torch.histc(l, bins=n_cls, min=0,
                                                                                 max=n_cls - 1) - hi
    return round(float(np.nanmean((inter / union).numpy())) * 100, 2)


@pytest.fixture
def model_parts(tiny_model):
    model, _, tokenizer = tiny_model
    return model.eval(), tokenizer


def _reference_queries(model, tokenizer):
    names, idx = class_queries(CLASSES)
    return query_features(model, tokenizer, names), idx


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_farslip_protocol_equals_rs_ovss(model_parts, tmp_path, suffix):
    model, tokenizer = model_parts
    ds = _dataset(tmp_path / "toy", suffix=suffix)
    proto = get_protocol("farslip", {"scale": 48, "crop": 32, "stride": 16})   # the tiny ViT's input is 32 px
    query, idx = _reference_queries(model, tokenizer)
    results = []
    for img_path, ann_path in ds.pairs():
        img, ori = mmcv_load_resize(img_path, 48)
        ref_logits, ref_probs, ref_pred = rs_ovss_image(model, img, ori, query, idx, crop=32, stride=16)
        logits, probs, pred = _engine(model, tokenizer, ds, proto, img_path)
        torch.testing.assert_close(logits, ref_logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(probs, ref_probs, rtol=0, atol=1e-5)
        assert torch.equal(pred, ref_pred)     # no threshold: the configs' 0.3 -> class 2 is not applied
        results.append((ref_pred, torch.from_numpy(np.array(Image.open(ann_path))).long()))
    res = fe.ovss(model, tokenizer, ds, scale=48, crop=32, stride=16, num_workers=0, show_progress=False)
    assert res["mIoU"] == _mmseg_miou(results, len(CLASSES))
    assert res.info["protocol"]["name"] == "farslip" and res.info["protocol"]["threshold"] == 0.0
    assert res.info["protocol"]["overridden"] == ["crop", "scale", "stride"]


def test_the_window_resize_path_fires_on_elongated_images(model_parts, tmp_path):
    """A 90 x 18 image fits 448 as 448 x 90... at scale 48: 48 x 10 -> 32 x 10 windows, padded to 32 x 16,
    resized to the model's 32 x 32 and back. Without that step the logits differ."""
    model, tokenizer = model_parts
    ds = _dataset(tmp_path / "toy", sizes=[(90, 18)])
    path = ds.pairs()[0][0]
    rs = get_protocol("farslip", {"scale": 48, "crop": 32, "stride": 16})
    with_resize, _, _ = _engine(model, tokenizer, ds, rs, path)
    without, _, _ = _engine(model, tokenizer, ds, rs.replace(window_to_model_size=False), path)
    assert (with_resize - without).abs().max() > 1e-3


def test_segearth_protocol_equals_segearth_ov(model_parts, tmp_path):
    model, tokenizer = model_parts
    ds = _dataset(tmp_path / "toy", threshold=0.3, background=2)
    proto = get_protocol("segearth", {"scale": 48, "crop": 32, "stride": 16})
    query, idx = _reference_queries(model, tokenizer)
    for img_path, _ in ds.pairs():
        img, ori = mmcv_load_resize(img_path, 48)
        ref_logits, ref_probs, ref_pred = segearth_image(model, img, ori, query, idx, crop=32, stride=16,
                                                         cls_lambda=-0.3, prob_thd=0.3, bg_idx=2)
        logits, probs, pred = _engine(model, tokenizer, ds, proto, img_path)
        torch.testing.assert_close(logits, ref_logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(probs, ref_probs, rtol=0, atol=1e-5)
        assert torch.equal(pred, ref_pred)


@pytest.fixture(scope="module")
def patch16_arch(tmp_path_factory):
    """A tiny ViT with patch 16, the patch SimFeatUp's x16 upsampling is made for."""
    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    d = tmp_path_factory.mktemp("p16")
    (d / "Test-Tiny-ViT-p16.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    return "Test-Tiny-ViT-p16"


def test_segearth_with_simfeatup_equals_segearth_ov(patch16_arch, tmp_path):
    torch.manual_seed(0)
    model, _, _, tokenizer = farslip.load_model(patch16_arch)
    model.eval()
    up = SimFeatUp(16).eval()
    with torch.no_grad():
        for p in up.parameters():
            p.normal_(0, 0.2)
    weights = tmp_path / "xclip_jbu_one.ckpt"
    torch.save({"state_dict": {f"upsampler.{k}": v for k, v in up.state_dict().items()}, "epoch": 1}, weights)
    ds = _dataset(tmp_path / "toy", sizes=[(60, 80), (100, 64)])
    proto = get_protocol("segearth", {"scale": 96, "crop": 64, "stride": 32, "simfeatup": str(weights)})
    query, idx = _reference_queries(model, tokenizer)
    for img_path, _ in ds.pairs():
        img, ori = mmcv_load_resize(img_path, 96)
        ref_logits, _, ref_pred = segearth_image(model, img, ori, query, idx, crop=64, stride=32, prob_thd=0.3,
                                                 bg_idx=2, upsampler=up)
        plain_logits, _, _ = segearth_image(model, img, ori, query, idx, crop=64, stride=32, prob_thd=0.3,
                                            bg_idx=2)
        logits, _, pred = _engine(model, tokenizer, ds, proto, img_path)
        torch.testing.assert_close(logits, ref_logits[0], rtol=0, atol=1e-5)
        assert torch.equal(pred, ref_pred)
        assert (ref_logits - plain_logits).abs().max() > 1e-3   # the upsampler did change something
    res = fe.ovss(model, tokenizer, ds, protocol="segearth", scale=96, crop=64, stride=32, simfeatup=str(weights),
                  num_workers=0, show_progress=False)
    assert res.info["protocol"]["simfeatup"] == str(weights)


def test_half_model_mirrors_the_official_half_precision(model_parts, tmp_path):
    """The official codes run a float16 model on float16 inputs (create_model(precision='fp16'), inputs.half());
    half_model='always' does so on the CPU too, so it can be checked here."""
    model, tokenizer = model_parts
    ds = _dataset(tmp_path / "toy", sizes=[(40, 60), (90, 18)])
    proto = get_protocol("farslip", {"scale": 48, "crop": 32, "stride": 16, "half_model": "always"})
    half = copy.deepcopy(model)
    open_clip.model.convert_weights_to_lp(half, dtype=torch.float16)
    query, idx = _reference_queries(half, tokenizer)
    agree = []
    for img_path, _ in ds.pairs():
        img, ori = mmcv_load_resize(img_path, 48)
        ref_logits, _, ref_pred = rs_ovss_image(half, img.half(), ori, query, idx, crop=32, stride=16)
        logits, _, pred = _engine(model, tokenizer, ds, proto, img_path)
        span = float(ref_logits.max() - ref_logits.min())
        assert (logits - ref_logits[0].float()).abs().max() <= 1e-2 * span
        agree.append((pred == ref_pred).float().mean())
    assert min(agree) >= 0.99
    assert next(model.parameters()).dtype == torch.float32        # the caller's model is left as it was
    res = fe.ovss(model, tokenizer, ds, scale=48, crop=32, stride=16, half_model="always", num_workers=0,
                  show_progress=False)
    assert res.info["protocol"]["precision"] == "float16 model"
