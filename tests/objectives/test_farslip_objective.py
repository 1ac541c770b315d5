"""FarSLIPObjective against the straightforward official data flow, gradients, teachers and validation."""
from __future__ import annotations


import pytest
import torch

from farslip.objectives import FarSLIPObjective, make_teacher

from support.reference_step import reference_stage1, reference_stage2

from support.batches import stage1_batch, stage2_batch


def _close(a, b):
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a.item(), b.item())


@pytest.mark.parametrize("align", ["roi2pooled", "roi2cls", "combined"])
def test_stage1_matches_reference(tiny_model, align):
    model, _, tok = tiny_model
    batch = stage1_batch(tok)
    got = FarSLIPObjective.stage1(distill=align)(model, batch)
    ref = reference_stage1(model, batch, distill_align=align)
    assert set(got) == {"global_itc", "distill", "total"}
    for k in got:
        _close(got[k], ref[k])


@pytest.mark.parametrize("target", ["ema", "frozen"])
@pytest.mark.parametrize("align", ["roi2pooled", "roi2cls", "combined"])
def test_stage1_teacher_matches_reference(tiny_model, target, align):
    model, _, tok = tiny_model
    teacher = make_teacher(model)
    with torch.no_grad():  # a teacher that differs from the student
        for p in teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = stage1_batch(tok)
    got = FarSLIPObjective.stage1(distill=align, target=target)(model, batch, teacher=teacher)
    ref = reference_stage1(model, batch, distill_align=align, teacher=teacher)
    for k in got:
        _close(got[k], ref[k])


@pytest.mark.parametrize("region", ["cls", "pooled", "roi"])
@pytest.mark.parametrize("multi_positive", [True, False])
def test_stage2_matches_reference(tiny_model, region, multi_positive):
    model, _, tok = tiny_model
    batch = stage2_batch(tok, caption_regions=True)  # label -1 regions dropped, as the official loss does
    got = FarSLIPObjective.stage2(region=region, multi_positive=multi_positive)(model, batch)
    ref = reference_stage2(model, batch, region_align=region, multi_positive=multi_positive)
    assert set(got) == {"global_itc", "region_itc", "total"}
    for k in got:
        _close(got[k], ref[k])


def test_paper_weights():
    s1, s2 = FarSLIPObjective.stage1(), FarSLIPObjective.stage2()
    assert (s1.distill, s1.target, s1.global_weight, s1.distill_weight) == ("roi2pooled", "active", 1.0, 0.1)
    assert (s2.region, s2.multi_positive, s2.global_weight, s2.region_weight) == ("cls", True, 1.0, 1.0)
    assert s1.region is None and s2.distill is None


def test_caption_regions_as_classes(tiny_model):
    model, _, tok = tiny_model
    batch = stage2_batch(tok, caption_regions=True)
    dropped = FarSLIPObjective.stage2()(model, batch)["region_itc"]
    kept = FarSLIPObjective.stage2(caption_regions="classes")(model, batch)["region_itc"]
    assert not torch.allclose(dropped, kept)
    # Same as giving the two identical captions one fresh label of their own.
    relabelled = dict(batch)
    labels = batch["region_labels"].clone()
    labels[1, 0] = labels[3, 1] = 99
    relabelled["region_labels"] = labels
    _close(kept, FarSLIPObjective.stage2()(model, relabelled)["region_itc"])


def _grad_of_inputs(model, objective, batch, teacher=None):
    batch = {k: v.clone().requires_grad_(True) if v.is_floating_point() else v for k, v in batch.items()}
    objective(model, batch, teacher=teacher)["distill"].backward()
    return batch


def test_active_gradients_reach_both_views(tiny_model):
    model, _, tok = tiny_model
    b = _grad_of_inputs(model, FarSLIPObjective.stage1(), stage1_batch(tok))
    assert b["images"].grad.abs().sum() > 0
    assert b["crop_images"].grad.abs().sum() > 0


@pytest.mark.parametrize("target", ["ema", "frozen"])
def test_teacher_gradients_reach_only_the_student(tiny_model, target):
    model, _, tok = tiny_model
    teacher = make_teacher(model)
    b = _grad_of_inputs(model, FarSLIPObjective.stage1(target=target), stage1_batch(tok), teacher)
    assert b["images"].grad.abs().sum() > 0
    assert b["crop_images"].grad is None
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_teacher_required_and_options_checked(tiny_model):
    model, _, tok = tiny_model
    with pytest.raises(ValueError, match="teacher"):
        FarSLIPObjective.stage1(target="ema")(model, stage1_batch(tok))
    with pytest.raises(ValueError, match="distill"):
        FarSLIPObjective(distill="roi2everything")
    with pytest.raises(KeyError, match="crop_images"):
        FarSLIPObjective.stage1()(model, {"images": torch.randn(2, 3, 32, 32), "texts": tok(["a", "b"])})


def test_vanilla_is_global_only(tiny_model):
    model, _, tok = tiny_model
    batch = stage1_batch(tok)
    got = FarSLIPObjective()(model, {"images": batch["images"], "texts": batch["texts"]})
    assert set(got) == {"global_itc", "total"}
    _close(got["total"], reference_stage1(model, batch)["global_itc"])
