"""SigLIP's sigmoid loss against its formula by hand, the global term chosen by the weights, both FarSLIP stages on
every tower family, and two gloo processes equal to one on a sigmoid-trained tower."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import farslip
from farslip.core.errors import UsageError
from farslip.objectives import FarSLIPObjective, sigmoid_loss

from support.batches import stage1_batch, stage2_batch

FAMILIES = ("vit", "vit-l14", "siglip2", "pe-core")


def _sigmoid_by_hand(img, txt, t, b):
    """``-1/B sum_i sum_j log(1 / (1 + exp(-z_ij (t cos_ij + b))))``, ``z = +1`` on the diagonal, ``-1`` off it:
    the SigLIP paper's Algorithm 1 written element by element."""
    B = len(img)
    total = 0.0
    for i in range(B):
        for j in range(len(txt)):
            cos = sum(a * c for a, c in zip(img[i], txt[j])) / math.sqrt(sum(a * a for a in img[i])) / \
                math.sqrt(sum(c * c for c in txt[j]))
            z = 1.0 if i == j else -1.0
            total += math.log(1 + math.exp(-z * (t * cos + b)))
    return total / B


def test_sigmoid_loss_by_hand():
    img = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    txt = [[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]]
    t_log, b = math.log(10.0), -3.0
    got = sigmoid_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(t_log), torch.tensor(b))
    assert got.item() == pytest.approx(_sigmoid_by_hand(img, txt, 10.0, b), rel=1e-6)


def test_sigmoid_loss_gradients_of_scale_and_bias_by_hand():
    """d/db = -1/B sum z (1 - sigmoid(z s)); d/dt' = t * (-1/B sum z cos (1 - sigmoid(z s))) with s = t cos + b."""
    torch.manual_seed(0)
    img, txt = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    t_log = torch.tensor(math.log(7.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    sigmoid_loss(img, txt, t_log, b).backward()
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    z = 2 * torch.eye(4, dtype=torch.float64) - 1
    s = 7.0 * cos - 2.0
    common = z * (1 - torch.sigmoid(z * s))
    assert b.grad.item() == pytest.approx((-common.sum() / 4).item(), rel=1e-9)
    assert t_log.grad.item() == pytest.approx((-7.0 * (common * cos).sum() / 4).item(), rel=1e-9)


def test_objective_global_term_is_the_sigmoid_loss_of_the_embeddings(tiny_towers):
    torch.manual_seed(0)
    model, _, _, tok = farslip.load_model(tiny_towers["siglip2"])
    batch = stage1_batch(tok, B=3)
    objective = FarSLIPObjective()  # vanilla: the global term alone
    assert objective.global_loss_for(model) == "sigmoid"
    losses = objective(model, batch)
    img = model.encode_image(batch["images"]).tolist()
    txt = model.encode_text(batch["texts"]).tolist()
    expected = _sigmoid_by_hand(img, txt, model.logit_scale.exp().item(), model.logit_bias.item())
    assert losses["global_itc"].item() == pytest.approx(expected, rel=1e-5)


def test_global_loss_chosen_by_the_weights_and_overridable(tiny_towers):
    siglip = farslip.load_model(tiny_towers["siglip2"])[0]
    clip = farslip.load_model(tiny_towers["vit"])[0]
    assert FarSLIPObjective.stage1().global_loss_for(siglip) == "sigmoid"
    assert FarSLIPObjective.stage1().global_loss_for(clip) == "softmax"
    assert FarSLIPObjective.stage1(global_loss="softmax").global_loss_for(siglip) == "softmax"
    with pytest.raises(UsageError, match="logit bias") as err:
        FarSLIPObjective.stage1(global_loss="sigmoid").global_loss_for(clip)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="global_loss"):
        FarSLIPObjective(global_loss="hinge")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stage", [1, 2])
def test_both_stages_on_every_family(tiny_towers, family, stage):
    """Stage 1 distils dense tokens, stage 2 aligns the pooled embedding of region views; gradients reach the image
    trunk through both terms and the text tower, and the logit bias where the global term is the sigmoid loss."""
    torch.manual_seed(0)
    model, _, _, tok = farslip.load_model(tiny_towers[family])
    S = model.visual.image_size
    S = S[0] if isinstance(S, (tuple, list)) else S
    batch = (stage1_batch if stage == 1 else stage2_batch)(tok, B=4, S=S)
    objective = FarSLIPObjective.stage1() if stage == 1 else FarSLIPObjective.stage2()
    losses = objective(model, batch)
    assert {"global_itc", "distill" if stage == 1 else "region_itc", "total"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    part = losses["distill"] if stage == 1 else losses["region_itc"]
    part.backward(retain_graph=True)
    blocks = [p for n, p in model.visual.named_parameters() if ".blocks.0." in n or ".resblocks.0." in n]
    assert blocks and all(p.grad is not None and p.grad.abs().sum() > 0 for p in blocks)
    model.zero_grad()
    losses["global_itc"].backward()
    if getattr(model, "logit_bias", None) is not None:
        assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0


def _worker(rank, world, rendezvous, folder, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        from support.towers import register_tiny_towers

        arch = register_tiny_towers(folder)["siglip2"]
        torch.manual_seed(0)
        model, _, _, tok = farslip.load_model(arch)
        batch = stage1_batch(tok, B=4)
        half = {k: v.chunk(world)[rank] for k, v in batch.items()}
        losses = FarSLIPObjective.stage1()(model, half)
        losses["total"].backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        for t in [*grads.values(), *losses.values()]:  # what DDP does with gradients; the mean loss
            dist.all_reduce(t.detach() if t.requires_grad else t)
        if rank == 0:
            torch.save({"losses": {k: v.detach() / world for k, v in losses.items()},
                        "grads": {n: g / world for n, g in grads.items()}}, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_with_the_sigmoid_loss(tmp_path, tiny_towers):
    """open_clip's SigLipLoss exchanges the texts between ranks (gloo, CPU): the mean loss and the DDP-averaged
    gradients of two processes on halves of a batch are those of one process on all of it."""
    out = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "rdzv"), tiny_towers["_folder"], str(out)), nprocs=2, join=True)
    torch.manual_seed(0)
    model, _, _, tok = farslip.load_model(tiny_towers["siglip2"])
    batch = stage1_batch(tok, B=4)
    losses = FarSLIPObjective.stage1()(model, batch)
    losses["total"].backward()
    got = torch.load(out, weights_only=True)
    # The sigmoid loss is a sum over rank pairs normalised by the local batch: its rank mean is the global loss.
    for k in ("global_itc", "total"):
        assert got["losses"][k].item() == pytest.approx(losses[k].item(), rel=1e-5), k
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got["grads"][n], p.grad, atol=2e-5, rtol=1e-4, msg=n)
