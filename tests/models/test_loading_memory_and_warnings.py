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


def test_checkpoint_config_wins_over_a_changed_registration(tiny_model, tmp_path):
    """A farslip checkpoint carries its architecture's config: if the name now means another config (a later
    version changed it, or a user registered their own), the checkpoint still loads, as it was saved."""
    import copy

    import open_clip
    import torch

    from farslip.models.loading import register_model_config

    model, _, _ = tiny_model
    cfg = open_clip.get_model_config("Test-Tiny-ViT")
    register_model_config("Test-Renamed-ViT", cfg)
    original, *_ = farslip.load_model("Test-Renamed-ViT")
    ckpt = farslip.save_model(original, tmp_path / "m.pt")
    changed = copy.deepcopy(cfg)
    changed["vision_cfg"]["layers"] += 1
    register_model_config("Test-Renamed-ViT", changed)
    loaded, *_ = farslip.load_model(None, ckpt)
    assert loaded.farslip_arch.startswith("Test-Renamed-ViT-ckpt-")
    images = torch.randn(2, 3, *loaded.visual.image_size)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), original.encode_image(images))
    again, *_ = farslip.load_model(None, farslip.save_model(loaded, tmp_path / "m2.pt"))  # and re-saves cleanly
    assert again.farslip_arch == loaded.farslip_arch


def test_drop_text_tower_keeps_the_image_tower(tiny_model):
    import pytest
    import torch

    from farslip.models import dense_features, drop_text_tower

    model, _, tokenizer = tiny_model
    images = torch.rand(1, 3, *model.visual.image_size)
    before = dense_features(model, images)
    n_text = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("transformer.", "token_embedding.")))
    total = sum(p.numel() for p in model.parameters())
    assert drop_text_tower(model) == n_text > 0
    assert sum(p.numel() for p in model.parameters()) == total - n_text
    after = dense_features(model, images)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises((AttributeError, TypeError)):
        model.encode_text(tokenizer(["a ship"]))
