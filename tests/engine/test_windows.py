"""OVSS sliding windows: SegEarth-OV's arithmetic by hand, and batched windows of several images equal to
SegEarth-OV's loop run one window at a time."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import farslip
from farslip.engine.images import prepare_image, rescaled_size
from farslip.engine.windows import pad_to_patch, sliding_window_logits, window_boxes

from support.reference_ovss import segearth_slide  # SegEarth-OV's one-window loop, shared with make bench


def test_window_boxes_by_hand():
    assert window_boxes(448, 448) == [(y, y + 224, x, x + 224) for y in (0, 112, 224) for x in (0, 112, 224)]
    # 448 x 300: the second column would end at 336 > 300 and is shifted back to end at the border
    assert window_boxes(448, 300) == [(y, y + 224, x1, x2) for y in (0, 112, 224) for x1, x2 in ((0, 224), (76, 300))]
    # smaller than a window: one window of the image's own size
    assert window_boxes(100, 150) == [(0, 100, 0, 150)]
    assert window_boxes(100, 448) == [(0, 100, 0, 224), (0, 100, 112, 336), (0, 100, 224, 448)]
    # exactly one stride more than a window
    assert window_boxes(336, 224) == [(0, 224, 0, 224), (112, 336, 0, 224)]


def test_pad_and_resize_by_hand():
    assert pad_to_patch(100, 300, 16) == (2, 2, 6, 6)       # (left, right, top, bottom), centred
    assert pad_to_patch(224, 224, 16) == (0, 0, 0, 0)
    assert pad_to_patch(21, 224, 8) == (0, 0, 1, 2)
    assert rescaled_size(1024, 1024, 448) == (448, 448)
    assert rescaled_size(2160, 4096, 448) == (236, 448)      # 2160 * 448/4096 = 236.25
    assert rescaled_size(300, 200, 448) == (448, 299)        # small images are enlarged too (mmcv imrescale)
    assert rescaled_size(512, 512, 448) == (448, 448)


def test_prepare_image_normalises_on_the_255_scale():
    rgb = torch.full((10, 20, 3), 128, dtype=torch.uint8)
    x = prepare_image(rgb, 40)
    assert x.shape == (3, 20, 40)
    assert torch.allclose(x[0], torch.full((20, 40), (128 - 122.771) / 68.501))


@pytest.mark.parametrize("attn, cls_lambda", [("segearth", -0.3), ("maskclip", -0.3), ("sclip", 0.0)])
def test_batched_windows_of_several_images_equal_one_at_a_time(tiny_model, attn, cls_lambda):
    model, _, _ = tiny_model
    model.eval()
    g = torch.Generator().manual_seed(1)
    query = F.normalize(torch.randn(5, model.text_projection.shape[1], generator=g), dim=-1)
    # a big image, one smaller than a window and not a patch multiple (padded), one non-square
    images = [torch.randn(3, 48, 72, generator=g), torch.randn(3, 21, 44, generator=g),
              torch.randn(3, 40, 33, generator=g)]
    with torch.no_grad():
        batched = sliding_window_logits(model, images, query, crop=32, stride=16, attn=attn,
                                        cls_lambda=cls_lambda, window_batch_size=4)
        for img, got in zip(images, batched):
            ref = segearth_slide(model, img, query, crop=32, stride=16, cls_lambda=cls_lambda, attn=attn)
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
