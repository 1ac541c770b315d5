"""OVSS windows per encoder call: the CPU/device default, and any batch size giving the one-window result."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from farslip.engine.windows import CPU_ROWS_PER_CALL, DEVICE_WINDOW_BATCH, default_window_batch, sliding_window_logits


def test_default_window_batch_on_cpu(tiny_model):
    model, _, _ = tiny_model  # patch 8
    assert default_window_batch(model, 32) == CPU_ROWS_PER_CALL // (4 * 4 + 1)
    assert default_window_batch(model, 224) == max(1, CPU_ROWS_PER_CALL // (28 * 28 + 1))
    assert default_window_batch(model, 1024) == 1
    assert DEVICE_WINDOW_BATCH == 64


def test_any_window_batch_gives_the_same_logits(tiny_model):
    model, _, _ = tiny_model
    model.eval()
    g = torch.Generator().manual_seed(2)
    query = F.normalize(torch.randn(4, model.text_projection.shape[1], generator=g), dim=-1)
    images = [torch.randn(3, 64, 96, generator=g), torch.randn(3, 40, 33, generator=g)]
    with torch.no_grad():
        ref = sliding_window_logits(model, images, query, crop=32, stride=16, window_batch_size=1)
        for wbs in (None, 3, 64):
            got = sliding_window_logits(model, images, query, crop=32, stride=16, window_batch_size=wbs)
            for a, b in zip(got, ref):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
