"""Text embeddings of class prompts are encoded once per text tower and prompt set, on disk, for every command:
a second run with the same model and classes encodes nothing and computes the same numbers."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from farslip.core.cache import cache_dir
from farslip.engine import OVSS_TEMPLATES, SCENE_TEMPLATES, name_embeddings


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FARSLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FARSLIP_NO_CACHE", raising=False)
    return tmp_path / "cache" / "text-embeddings"


@pytest.fixture
def encoded(monkeypatch):
    """How many prompts the text encoder has seen (every CLIP's ``encode_text`` counted)."""
    seen = {"prompts": 0}
    original = open_clip.model.CLIP.encode_text

    def counting(self, text, *args, **kwargs):
        seen["prompts"] += len(text)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", counting)
    return seen


def test_the_cache_folder_follows_xdg(monkeypatch, tmp_path):
    for var in ("FARSLIP_CACHE_DIR", "XDG_CACHE_HOME", "FARSLIP_NO_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("text-embeddings") == tmp_path / "home" / ".cache" / "farslip" / "text-embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("x") == tmp_path / "xdg" / "farslip" / "x"
    monkeypatch.setenv("FARSLIP_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir("x") == tmp_path / "mine" / "x"
    monkeypatch.setenv("FARSLIP_NO_CACHE", "1")
    assert cache_dir("x") is None


def test_a_second_run_encodes_nothing_and_gives_the_same_numbers(tiny_model, own_cache, encoded):
    model, _, tokenizer = tiny_model
    names = ["water", "building", "tree"]
    first = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES)
    assert encoded["prompts"] == len(names) * len(OVSS_TEMPLATES)
    assert len(list(own_cache.glob("*.safetensors"))) == 1
    encoded["prompts"] = 0
    again = name_embeddings(model, tokenizer, names[::-1], OVSS_TEMPLATES)  # another order, a new process's call
    assert encoded["prompts"] == 0 and torch.equal(again, first.flip(0))
    name_embeddings(model, tokenizer, ["water", "road"], OVSS_TEMPLATES)  # only the new name is encoded
    assert encoded["prompts"] == len(OVSS_TEMPLATES)
    name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)  # another prompt set is another entry
    assert encoded["prompts"] == len(OVSS_TEMPLATES) + len(SCENE_TEMPLATES)


def test_other_weights_are_encoded_again(tiny_model, own_cache, encoded):
    model, _, tokenizer = tiny_model
    before = name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)
    with torch.no_grad():
        model.text_projection.mul_(-1.0)  # an optimiser step or load_state_dict changes the weights in place
    after = name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)
    assert encoded["prompts"] == 2 * len(SCENE_TEMPLATES)
    assert torch.allclose(after, -before, atol=1e-6)
    with torch.no_grad():
        model.visual.proj.mul_(2.0)  # the image tower does not change a text embedding
    name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)
    assert encoded["prompts"] == 2 * len(SCENE_TEMPLATES)


def test_a_damaged_cache_is_computed_again(tiny_model, own_cache, encoded):
    model, _, tokenizer = tiny_model
    first = name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)
    (damaged,) = own_cache.glob("*.safetensors")
    damaged.write_bytes(b"\x00" * 10)
    again = name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)
    assert encoded["prompts"] == 2 * len(SCENE_TEMPLATES) and torch.equal(again, first)


def test_no_cache_when_turned_off(tiny_model, own_cache, encoded, monkeypatch):
    monkeypatch.setenv("FARSLIP_NO_CACHE", "1")
    model, _, tokenizer = tiny_model
    for _ in range(2):
        name_embeddings(model, tokenizer, ["water"], SCENE_TEMPLATES)
    assert encoded["prompts"] == 2 * len(SCENE_TEMPLATES) and not own_cache.exists()


def test_segment_then_locate_then_segment_again(tmp_path, tiny_arch, own_cache, encoded):
    """The cache is shared by the commands: a name segment encoded is not encoded by locate, and a second segment
    of the same classes encodes nothing."""
    import farslip
    from support.hostile import write_geotiff

    torch.manual_seed(0)
    model, *_ = farslip.load_model(tiny_arch)
    ckpt = farslip.save_model(model, tmp_path / "m.pt")
    scene = write_geotiff(tmp_path / "s.tif", np.random.default_rng(0).integers(0, 255, (3, 40, 40), np.uint8))
    farslip.segment(scene, ["water", "building"], checkpoint=ckpt, out=tmp_path / "a", progress=False)
    assert encoded["prompts"] == 2 * len(OVSS_TEMPLATES)
    farslip.locate(["water"], scene, checkpoint=ckpt, out=tmp_path / "b", progress=False,
                   background=["building", "road"])
    assert encoded["prompts"] == 3 * len(OVSS_TEMPLATES)  # only "road" was new
    farslip.segment(scene, ["water", "building"], checkpoint=ckpt, out=tmp_path / "c", progress=False)
    assert encoded["prompts"] == 3 * len(OVSS_TEMPLATES)
