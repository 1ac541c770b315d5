"""load_model: weights held once while loading (meta-device build), and no false "initialized randomly" warning."""
from __future__ import annotations

import logging

import farslip


def test_random_init_warning_only_when_true(tiny_model, tmp_path, caplog):
    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "m.pt")
    with caplog.at_level(logging.WARNING):
        farslip.load_model(None, ckpt)
    assert "initialized randomly" not in caplog.text
    with caplog.at_level(logging.WARNING):
        farslip.load_model("Test-Tiny-ViT")  # no weights at all: the warning is true and stays
    assert "initialized randomly" in caplog.text


def test_meta_built_model_equals_a_copied_one(tiny_model, tmp_path, monkeypatch):
    """Checkpoints load into a model built on the meta device (weights held once); the result is the same model
    as building it on the CPU and copying the weights in, the causal text mask included."""
    import torch

    from farslip.models import loading

    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "m.pt")
    fast, *_ = farslip.load_model(None, ckpt)
    assert not any(t.is_meta for t in (*fast.parameters(), *fast.buffers()))
    monkeypatch.setattr(loading, "_materialize_masks", lambda m: False)  # forces the copying path
    slow, *_ = farslip.load_model(None, ckpt)
    torch.testing.assert_close(fast.attn_mask, slow.attn_mask, rtol=0, atol=0)
    for (k, a), (_, b) in zip(fast.state_dict().items(), slow.state_dict().items()):
        assert torch.equal(a, b), k
    tokens = torch.randint(0, 400, (2, fast.context_length))
    images = torch.randn(2, 3, *fast.visual.image_size)
    with torch.no_grad():
        assert torch.equal(fast.encode_text(tokens), slow.encode_text(tokens))
        assert torch.equal(fast.encode_image(images), slow.encode_image(images))


def test_parameters_from_views_of_one_buffer_stay_independent(tiny_model, tmp_path):
    """A checkpoint whose tensors are views of one flat buffer (as some trainers save them) must not give
    parameters that write into each other."""
    import torch

    model, _, _ = tiny_model
    sd = model.state_dict()
    flat = torch.cat([v.reshape(-1) for v in sd.values()])
    views, at = {}, 0
    for k, v in sd.items():
        views[k] = flat[at:at + v.numel()].view(v.shape)
        at += v.numel()
    torch.save(views, tmp_path / "flat.pt")
    loaded, *_ = farslip.load_model("Test-Tiny-ViT", tmp_path / "flat.pt")
    ptrs = [p.untyped_storage().data_ptr() for p in loaded.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    for (k, a), b in zip(loaded.state_dict().items(), views.values()):
        assert torch.equal(a, b), k
