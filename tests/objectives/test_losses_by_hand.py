"""Each loss against a value computed by hand on small tensors."""
from __future__ import annotations

import math

import pytest
import torch

from farslip.objectives import clip_loss, cosine_distill_loss, make_teacher, multi_positive_loss, roi_pooled, update_ema


def test_clip_loss_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    scale = torch.tensor(math.log(2.0))  # exp -> 2
    # logits = 2 * cos: [[2, sqrt2], [0, sqrt2]]
    s2 = math.sqrt(2)
    li = [-(2 - math.log(math.exp(2) + math.exp(s2))), -(s2 - math.log(1 + math.exp(s2)))]
    lt = [-(2 - math.log(math.exp(2) + 1)), -(s2 - math.log(math.exp(s2) + math.exp(s2)))]
    expected = (sum(li) / 2 + sum(lt) / 2) / 2
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected, rel=1e-6)


def test_multi_positive_by_hand():
    # Three regions: two of class 0, one of class 1; a fourth is padding and must not count.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 7])
    valid = torch.tensor([True, True, True, False])
    scale = torch.tensor(0.0)  # exp -> 1: logits are cosines
    c = 1 / math.sqrt(2)
    L = torch.tensor([[1, 1, 0], [0, 0, 1], [c, c, c]], dtype=torch.float64)
    T = torch.tensor([[.5, .5, 0], [.5, .5, 0], [0, 0, 1]], dtype=torch.float64)
    i2t = -(T * torch.log_softmax(L, 1)).sum(1).mean()
    t2i = -(T * torch.log_softmax(L.T, 1)).sum(1).mean()
    got = multi_positive_loss(img, txt, labels, valid, scale)
    assert got.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)
    # Single positive: identity targets.
    I = torch.eye(3, dtype=torch.float64)
    single = (-(I * torch.log_softmax(L, 1)).sum(1).mean() - (I * torch.log_softmax(L.T, 1)).sum(1).mean()) / 2
    got = multi_positive_loss(img, txt, labels, valid, scale, multi_positive=False)
    assert got.item() == pytest.approx(single.item(), rel=1e-6)


def test_roi_pooled_by_hand():
    # A 4 x 4 map whose value at token (y, x) is x + 10 y: bilinear sampling is exact on it.
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    tokens = (xs + 10 * ys)[None, :, :, None]
    whole = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    assert roi_pooled(tokens, whole).item() == pytest.approx(tokens.mean().item())  # bins hit token centres
    centre = torch.tensor([[[0.25, 0.25, 0.75, 0.75]]])  # grid box [1, 3]: token centres 0.75..2.25
    assert roi_pooled(tokens, centre).item() == pytest.approx(1.5 + 10 * 1.5)


def test_cosine_distill_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    assert cosine_distill_loss(s, t).item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 0) / 2)


def test_ema_update_by_hand():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(2.0)
    teacher = make_teacher(model)
    with torch.no_grad():
        teacher.weight.zero_()
        teacher.bias.zero_()
    update_ema(teacher, model, momentum=0.99)
    assert torch.allclose(teacher.weight, torch.full((1, 2), 0.01))
    assert torch.allclose(teacher.bias, torch.tensor([0.02]))
    assert not any(p.requires_grad for p in teacher.parameters())
