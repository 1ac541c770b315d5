"""FSDP2 (optim.fsdp, train/sharding.py) on CPUs with gloo: the same losses, gradients and weights as DDP on every
tower family (fp32 closely, bf16 within its precision), sharded checkpoints that load exactly onto another number
of ranks, and exact resume through the trainer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import farslip
from farslip.train import load_config, sharding, train

from support import sharded_worker
from support.fixtures import REPO, torchrun_train, tiny_overrides


def _spawn(fn, world, tmp_path, *args):
    rendezvous = tmp_path / f"rdzv-{fn.__name__}-{len(list(tmp_path.iterdir()))}"
    mp.spawn(fn, args=(world, str(rendezvous), *args), nprocs=world, join=True)


CASES = [("vit", 1, "fp32", False), ("vit", 2, "fp32", True), ("siglip2", 1, "fp32", False),
         ("pe-core", 2, "fp32", False), ("vit-l14", 1, "bf16", False)]


def test_fsdp_equals_ddp(tmp_path, tiny_towers):
    """Two gloo processes, two optimiser steps with clipping, on every family (CLS and MAP towers, the sigmoid
    loss, long text's frozen rows): FSDP (blocks sharded, activation checkpointing, and bf16 block weights with
    amp_bf16) against DDP with the same autocast."""
    out = tmp_path / "steps.pt"
    _spawn(sharded_worker.steps, 2, tmp_path, tiny_towers["_folder"], CASES, 2, str(out))
    got = torch.load(out, weights_only=True)
    for case in CASES:
        ddp, fsdp = got[case]["ddp"], got[case]["fsdp"]
        fp32 = case[2] == "fp32"
        close = dict(atol=2e-5, rtol=1e-4) if fp32 else dict(atol=5e-2, rtol=5e-2)
        assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-5 if fp32 else 2e-2), case
        assert fsdp["grads"].keys() == ddp["grads"].keys()
        for name, g in ddp["grads"].items():
            mine = fsdp["grads"][name].reshape(g.shape)  # FSDP holds the logit scale and bias as one element
            if fp32:
                torch.testing.assert_close(mine, g, **close, msg=f"{case} {name}")
            else:  # bf16 weights round every product: the gradients point the same way
                cos = torch.nn.functional.cosine_similarity(mine.flatten().float(), g.flatten(), dim=0)
                assert cos > 0.98 or g.norm() < 1e-6, (case, name)
        assert fsdp["weights"].keys() == ddp["weights"].keys()
        for name, w in ddp["weights"].items():
            torch.testing.assert_close(fsdp["weights"][name], w, **close, msg=f"{case} {name}")


def _in_this_process(*args):
    """FSDP over a group of one in the test's own process (the trainer's one-process path)."""
    sharding._join_alone(torch.device("cpu"))
    try:
        return sharded_worker.load_and_save(*args)
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_checkpoint_loads_exactly_onto_other_numbers_of_ranks(tmp_path, tiny_towers):
    """Written by one rank and read by two, written again by two and read by one: the model and the optimiser
    state come back unchanged."""
    folder = tiny_towers["_folder"]
    one, two, out = tmp_path / "one.dcp", tmp_path / "two.dcp", tmp_path / "two.pt"
    written = _in_this_process(folder, "siglip2", None, one)
    _spawn(sharded_worker.reshard, 2, tmp_path, folder, "siglip2", str(one), str(two), str(out))
    states = [torch.load(out, weights_only=True), _in_this_process(folder, "siglip2", two, None)]
    assert any(v.abs().sum() > 0 for s in written["optimizer"].values() for v in s.values())  # a real step
    for state in states:
        assert state["weights"].keys() == written["weights"].keys()
        assert all(torch.equal(state["weights"][k], v) for k, v in written["weights"].items())
        assert state["optimizer"].keys() == written["optimizer"].keys()
        for k, slots in written["optimizer"].items():
            assert all(torch.equal(state["optimizer"][k][slot], v) for slot, v in slots.items()), k


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def _validate(model, tokenizer, preprocess, step):
    """The plain model called outside the training step, as validators call it (its root unit gathered)."""
    with torch.no_grad():
        image = model.encode_image(torch.zeros(1, 3, 32, 32))
        text = model.encode_text(tokenizer(["a harbor"]))
    return {"cosine": torch.nn.functional.cosine_similarity(image, text).item()}


def test_sharded_resume_is_exact_in_one_process(tmp_path, tiny_towers):
    """FSDP on one process (a group of one): 3 steps straight, or 2 then a resume from the sharded checkpoint;
    validation calls the model between steps."""
    def run(name, stop_after=None, resume=None):
        over = tiny_overrides(tmp_path / name, 1, arch=tiny_towers["siglip2"], steps=3)
        over["model"]["quick_gelu"] = False
        over["optim"].update(fsdp=True, precision="amp_bf16")
        over["run"].update(save_every=2, val_every=1, stop_after=stop_after)
        cfg = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over)
        train(cfg, resume=resume, validate=_validate)
        return Path(cfg.run.out)

    full = run("full")
    part = run("part", stop_after=2)
    assert (part / "checkpoints" / "step_00000002.dcp").is_dir()
    part = run("part", resume="auto")
    assert [e["total"] for e in _log(part) if "total" in e] == [e["total"] for e in _log(full) if "total" in e]
    assert [e["val/cosine"] for e in _log(full) if "val/cosine" in e] == \
        [e["val/cosine"] for e in _log(part) if "val/cosine" in e]
    a = farslip.load_model(checkpoint=str(full / "final.pt"))[0].state_dict()
    b = farslip.load_model(checkpoint=str(part / "final.pt"))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The sharded step checkpoint is a model file too.
    step2 = farslip.load_model(checkpoint=str(part / "checkpoints" / "step_00000002.pt"))[0]
    assert step2.logit_bias.shape == a["logit_bias"].shape == ()


def _torchrun(over: dict, *extra: str):
    return torchrun_train(REPO / "configs" / "stage2_vitb16_mgrs.yaml", over, *extra)


@pytest.mark.slow
def test_two_ranks_sharded_resume_is_exact(tmp_path):
    """The farslip command under torchrun, FSDP over two gloo ranks, stage 2 with long text (frozen rows on sharded
    parameters): 3 steps straight, or 2 then --resume auto."""
    def over(name, stop_after=None):
        o = tiny_overrides(tmp_path / name, 2, arch="FarSLIP-Tiny", steps=3)
        o["optim"].update(batch_size=2, fsdp=True, precision="amp_bf16")
        o["run"].update(save_every=2, stop_after=stop_after)
        return o

    _torchrun(over("full"))
    _torchrun(over("part", stop_after=2))
    _torchrun(over("part"), "--resume", "auto")
    full, part = tmp_path / "full" / "run", tmp_path / "part" / "run"
    assert [e["total_by_rank"] for e in _log(part)] == [e["total_by_rank"] for e in _log(full)]
    a = torch.load(full / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "final.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change,fragment", [({"precision": "amp"}, "amp_bf16"),
                                             ({"compile": True}, "optim.compile"),
                                             ({}, "objective.target='ema'")])
def test_what_sharding_cannot_do_is_one_line(tmp_path, change, fragment):
    from farslip.core.errors import UsageError

    over = tiny_overrides(tmp_path, 1, steps=1)
    over["optim"].update({"fsdp": True, "precision": "fp32", **change})
    if not change:
        over["objective"] = {"target": "ema"}
    with pytest.raises(UsageError) as err:
        train(load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_resumes_only_with_its_own_fsdp_setting(tmp_path):
    from farslip.core.errors import UsageError

    over = tiny_overrides(tmp_path, 1, steps=1)
    over["optim"].update(precision="fp32")
    train(load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over))
    over["optim"].update(fsdp=True, max_steps=2)
    changed = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", over)
    with pytest.raises(Exception, match=r"optim.fsdp False -> True"):  # the changed config, named
        train(changed, resume="auto")
    # Even when changes are accepted, the checkpoint's layout cannot change.
    with pytest.raises(UsageError, match="written without optim.fsdp; resume with optim.fsdp: false"):
        train(changed, resume="auto", resume_changed=True)
