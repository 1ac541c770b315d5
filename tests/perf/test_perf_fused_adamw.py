"""The trainer's fused AdamW (one kernel per tensor) against torch's per-tensor AdamW loop: same update."""
from __future__ import annotations

import copy

import torch

from farslip.objectives import FarSLIPObjective
from farslip.train.optim import build_optimizer, fused_adamw_supported


def stage1_batch(tokenizer, B=4, K=2, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, K, 2, generator=g) * 0.5
    wh = 0.2 + torch.rand(B, K, 2, generator=g) * 0.3
    return {"images": torch.randn(B, 3, S, S, generator=g),
            "texts": tokenizer([f"a satellite image of {n} ships in a harbour" for n in range(B)]),
            "crop_images": torch.randn(B, K, 3, S, S, generator=g),
            "crop_boxes": torch.cat([xy, xy + wh], dim=-1)}


def test_fused_is_chosen_where_supported(tiny_model):
    model, _, _ = tiny_model
    assert fused_adamw_supported(model.parameters())  # CPU floats: torch has the fused kernel
    opt = build_optimizer(model, 1e-3, 0.2)
    assert all(g["fused"] for g in opt.param_groups)
    assert not any(g["fused"] for g in build_optimizer(model, 1e-3, 0.2, fused=False).param_groups)
    assert not fused_adamw_supported([])


def test_fused_steps_equal_the_per_tensor_loop(tiny_model):
    """Same gradients in, same parameters and optimizer state out, step after step (float rounding apart)."""
    model, _, _ = tiny_model
    twin = copy.deepcopy(model)
    fused, plain = build_optimizer(model, 1e-3, 0.2), build_optimizer(twin, 1e-3, 0.2, fused=False)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        for a, b in zip(model.parameters(), twin.parameters()):
            grad = torch.randn(a.shape, generator=g) * 10 ** float(torch.empty(1).uniform_(-4, 0, generator=g))
            a.grad, b.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    for sa, sb in zip(fused.state.values(), plain.state.values()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(sa[key], sb[key])


def test_a_training_step_with_fused_adamw_equals_the_plain_one(tiny_model):
    """One objective step (forward, backward, update) with either optimizer gives the same model."""
    model, _, tok = tiny_model
    twin = copy.deepcopy(model)
    objective = FarSLIPObjective.stage1()
    batch = stage1_batch(tok)
    for m, opt in ((model, build_optimizer(model, 1e-3, 0.2)), (twin, build_optimizer(twin, 1e-3, 0.2, fused=False))):
        objective(m, batch)["total"].backward()
        opt.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, msg=name)
