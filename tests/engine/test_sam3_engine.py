"""The SAM 3 engine against a transcription of SegEarth-OV3's segmentor (tests/support/reference_segearth_ov3.py)
on tiny random SAM 3 models: same maps, same predictions, with the image encoder run once per window and the class
prompts batched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from farslip.engine.sam3 import (FusionRule, check_prompt_lengths, object_scores, sam3_runtime, sam3_windows,
                                 synonym_max)
from farslip.engine.scores import predict_classes
from farslip.models.sam3 import sam3_tokenizer
from support.reference_segearth_ov3 import Segmentor, get_cls_idx
from support.sam3 import one_thread  # noqa: F401 (fixture)
from support.sam3 import lively_tiny_sam3

pytestmark = pytest.mark.usefixtures("one_thread")

LINES = ["building,roof", "road", "tree,forest,grass", "water"]


@pytest.fixture(scope="module")
def model():
    return lively_tiny_sam3(seed=0)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    y, x = np.mgrid[0:100, 0:110]
    rgb = np.stack([x * 1.7, y * 1.9, (x * y) % 255], axis=-1).astype(np.uint8)
    rgb[20:60, 30:80] = [200, 40, 40]
    path = tmp_path_factory.mktemp("sam3") / "scene.png"
    Image.fromarray(rgb).save(path)
    return path


def _median_confidence(model) -> float:
    """A confidence threshold that keeps about half of the objects (so both branches run)."""
    rt = sam3_runtime(model, sam3_tokenizer(), ["road"], FusionRule())
    window = torch.zeros(3, 64, 64, dtype=torch.uint8)
    _, _, _, g = next(rt.groundings([window]))
    return float(object_scores(g).median())


def _compare(model, image_path, rule: FusionRule, crop, stride, prob_thd, bg):
    names, owner = get_cls_idx(LINES)
    rgb = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)
    runtime = sam3_runtime(model, sam3_tokenizer(), names, rule, prompt_batch=3, window_batch=2)
    maps = runtime.image_maps(rgb, sam3_windows(rgb.shape[1], rgb.shape[2], crop, stride))
    scores = synonym_max(maps, torch.tensor(owner), len(LINES))
    pred = predict_classes(scores, prob_thd, bg)
    ref = Segmentor(model, sam3_tokenizer(), LINES, resolution=112, prob_thd=prob_thd, bg_idx=bg,
                    slide_stride=stride or 0, slide_crop=crop or 0, confidence_threshold=rule.confidence,
                    use_sem_seg=rule.semantic, use_presence_score=rule.presence,
                    use_transformer_decoder=rule.instances)
    ref_scores, ref_pred = ref.predict(image_path)
    assert torch.allclose(scores, ref_scores, atol=1e-4), (scores - ref_scores).abs().max()
    top2 = ref_scores.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4  # float-level ties may break either way
    assert torch.equal(pred[clear], ref_pred[clear])
    return scores


@pytest.mark.parametrize("rule", [dict(), dict(semantic=False), dict(presence=False), dict(instances=False)])
def test_sliding_windows_match_the_segmentor(model, image_path, rule):
    conf = _median_confidence(model)
    scores = _compare(model, image_path, FusionRule(confidence=conf, **rule), crop=64, stride=48, prob_thd=0.05, bg=3)
    assert scores.std() > 0


def test_whole_image_window_matches_the_segmentor(model, image_path):
    """A dataset config without slide_crop: the whole image is one window."""
    _compare(model, image_path, FusionRule(confidence=_median_confidence(model)), crop=None, stride=None,
             prob_thd=0.3, bg=0)


def test_batched_prompts_equal_one_at_a_time(model):
    names = [n for line in LINES for n in line.split(",")]
    window = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (3, 90, 70), dtype=np.uint8))
    rule = FusionRule(confidence=_median_confidence(model))
    together = sam3_runtime(model, sam3_tokenizer(), names, rule, prompt_batch=len(names)).maps([window])[0]
    alone = torch.cat([sam3_runtime(model, sam3_tokenizer(), [n], rule).maps([window])[0] for n in names])
    assert torch.allclose(together, alone, atol=1e-5)


def test_bf16_autocast_as_the_segmentor_runs_it(model, image_path):
    """bf16 autocast (the protocol's GPU arithmetic) around the same steps as the segmentor's."""
    names, owner = get_cls_idx(LINES)
    rgb = torch.from_numpy(np.array(Image.open(image_path).convert("RGB"))).permute(2, 0, 1)
    rule = FusionRule(confidence=_median_confidence(model))
    runtime = sam3_runtime(model, sam3_tokenizer(), names, rule, autocast=True, prompt_batch=1)
    maps = runtime.image_maps(rgb, sam3_windows(100, 110, 64, 48))
    ref = Segmentor(model, sam3_tokenizer(), LINES, resolution=112, slide_stride=48, slide_crop=64,
                    confidence_threshold=rule.confidence, bf16=True)
    ref_scores, _ = ref.predict(image_path)
    scores = synonym_max(maps, torch.tensor(owner), len(LINES))
    assert torch.allclose(scores, ref_scores, atol=2e-2)
    assert (scores - ref_scores).abs().mean() < 2e-3


def test_a_name_longer_than_the_text_encoder_takes_is_refused():
    with pytest.raises(ValueError, match="tokens long"):
        check_prompt_lengths(sam3_tokenizer(), ["road", "a " * 40 + "house"])
    with pytest.raises(ValueError, match="no class names"):
        check_prompt_lengths(sam3_tokenizer(), [])


def test_kept_masks_resized_in_chunks_give_the_same_map():
    from farslip.engine.sam3 import kept_instance_map

    g = torch.Generator().manual_seed(0)
    masks, scores = torch.randn(20, 8, 8, generator=g), torch.rand(20, generator=g)
    keep = scores > 0.3
    whole = kept_instance_map(masks, scores, keep, (30, 20), chunk=100)
    assert torch.equal(kept_instance_map(masks, scores, keep, (30, 20), chunk=3), whole)
    assert kept_instance_map(masks, scores, scores > 2, (30, 20)) is None


def test_prompts_per_decoder_call_on_a_cpu_follow_the_image_tokens():
    """The full size's decoder takes one prompt a call on a CPU (a batch there only grows the peak), the tiny
    configs of the tests eight (per-call overhead dominates)."""
    from types import SimpleNamespace

    from farslip.engine.sam3 import cpu_prompt_batch
    from farslip.models.sam3 import sam3_config

    assert cpu_prompt_batch(SimpleNamespace(config=sam3_config("full"))) == 1
    assert cpu_prompt_batch(SimpleNamespace(config=sam3_config("tiny"))) == 8
