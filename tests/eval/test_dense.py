"""The dense-feature probes (farslip.eval.dense) on hand-made tokens, texts and label maps whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from farslip.eval import OVSSDataset
from farslip.eval.dense import QUARTERS, crop_agreement, dense_metrics, patch_hits

# classes: 0 background, 1 water (two names), 2 forest; one axis of a 4-d space per name
TEXT = torch.eye(4)  # background, water, river, forest
OWNER = torch.tensor([0, 1, 1, 2])


def _tokens(*axes_and_extras):
    """A 2 x 2 grid of tokens: each the unit vector of the given axis plus any small extra."""
    grid = torch.zeros(2, 2, 4)
    for (r, c), axis, extra in axes_and_extras:
        grid[r, c, axis] = 1.0
        grid[r, c] += extra
    return grid


def test_patch_hits_counts_labelled_patches_and_never_predicts_background():
    tokens = _tokens(((0, 0), 2, 0),                                  # river: a synonym of water
                     ((0, 1), 3, 0),                                  # forest
                     ((1, 0), 0, torch.tensor([0, 0, 0, 0.1])),       # nearest background, then forest
                     ((1, 1), 1, 0))                                  # water
    label = torch.zeros(4, 4, dtype=torch.long)  # 2 x 2 pixels a patch
    label[:2, :] = 1                             # top row of patches: water
    label[2:, :2] = 2
    label[3, 0] = 0                              # bottom-left patch: 3 of 4 pixels forest, 1 background
    # bottom-right patch all background: not counted, though its token is water
    hits, counted = patch_hits(tokens, label, TEXT, OWNER, n_classes=3, background=0, ignore=255)
    assert (hits, counted) == (2, 3)  # top-left (river -> water) and bottom-left (forest once background is out)


def test_patch_hits_needs_a_class_on_half_the_patch_and_ignore_is_no_class():
    tokens = _tokens(((0, 0), 1, 0), ((0, 1), 1, 0), ((1, 0), 3, 0), ((1, 1), 3, 0))
    label = torch.full((4, 4), 255, dtype=torch.long)
    label[0, :2] = 1            # top-left: water on 2 of 4 pixels, the rest ignored: counted, correct
    label[0, 2], label[0, 3], label[1, 2] = 1, 2, 0  # top-right: 1/4 each: no majority, not counted
    label[2:, :2] = 1           # bottom-left: all water, token forest: counted, wrong
    label[2, 2] = 2             # bottom-right: forest on 1 of 4 pixels: not counted
    assert patch_hits(tokens, label, TEXT, OWNER, n_classes=3, background=0, ignore=255) == (1, 2)


def test_crop_agreement_is_the_cosine_of_each_box_with_its_own_crop_per_image():
    a, b = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    tokens = torch.stack([a.expand(4, 4, 3), b.expand(4, 4, 3)])  # constant maps: any box pools to the constant
    crops = torch.stack([a, a, a, a,        # image 0: every crop agrees (cosine 1)
                         b, -b, b, a])      # image 1: 1, -1, 1, 0 -> mean 0.25
    crop_tokens = crops[:, None, None, :].expand(-1, 2, 2, -1)
    assert crop_agreement(tokens, crop_tokens, QUARTERS).tolist() == pytest.approx([1.0, 0.25])


def _write_dataset(root):
    """Two 64 x 64 images (a 4 x 4 grid of 16-px patches once squashed to the tiny model's 32 px) with 10 counted
    patches: image 0's left half water (8 patches; its right half background); image 1 ignored but for forest on
    the top-left patch and on half of the one beside it."""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    rng = np.random.default_rng(0)
    left_water = np.zeros((64, 64), np.uint8)
    left_water[:, :32] = 1
    forest_corner = np.full((64, 64), 255, np.uint8)
    forest_corner[:16, :24] = 2
    for i, label in enumerate((left_water, forest_corner)):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "img" / f"im{i}.png")
        Image.fromarray(label).save(root / "ann" / f"im{i}.png")
    return OVSSDataset(str(root / "img"), str(root / "ann"), [["background"], ["water", "river"], ["forest"]])


def test_dense_metrics_counts_the_known_patches_whatever_the_batch(tiny_model, tmp_path):
    model, _, tokenizer = tiny_model
    model.eval()
    ds = _write_dataset(tmp_path)
    whole, one_by_one = dense_metrics(model, tokenizer, ds), dense_metrics(model, tokenizer, ds, batch=1)
    assert whole["patches"] == 10
    assert whole["patch_acc"] in {round(100 * k / 10, 2) for k in range(11)}
    assert -1 <= whole["crop_agreement"] <= 1
    assert one_by_one["patches"] == whole["patches"] and one_by_one["patch_acc"] == whole["patch_acc"]
    assert one_by_one["crop_agreement"] == pytest.approx(whole["crop_agreement"], abs=1e-4)
