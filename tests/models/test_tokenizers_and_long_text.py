"""Tokenizers of every family without a download (SigLIP 2's Hub tokenizer stood in for by a local folder,
tests/data/tiny_tokenizer/make.py), one line when a Hub tokenizer cannot be fetched, and long text (248 tokens)
where the text tower allows it, refused in one line where it does not."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

import farslip
from farslip.core.errors import UsageError
from farslip.models.long_text import LONG_CONTEXT, check_long_text
from farslip.models.towers import text_tower

from support.towers import tower_configs


def test_siglip2_tokenizer_is_the_local_hub_style_folder(tiny_towers):
    torch.manual_seed(0)
    model, _, _, tok = farslip.load_model(tiny_towers["siglip2"])
    ids = tok(["a satellite image of a harbor", "Storage tanks near the river"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert (ids == 1).sum(dim=1).tolist() == [1, 1]  # one end-of-text token each, then padding (id 0)
    assert tok(["A Harbor"]).tolist() == tok(["a harbor"]).tolist()  # canonicalised as SigLIP's is
    with torch.no_grad():
        emb = model.encode_text(ids)
    assert emb.shape == (2, 64) and not torch.allclose(emb[0], emb[1])


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))


@pytest.fixture
def hub_tokenizer_arch(tmp_path, tiny_towers):
    """The tiny SigLIP 2 with its tokenizer named on the Hub (as the real one is), not in any cache."""
    cfg = json.loads(json.dumps(tower_configs(tmp_path)["Test-Tiny-SigLIP2"]))
    cfg["text_cfg"]["hf_tokenizer_name"] = "farslip-test/tokenizer-not-cached"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "Test-Tiny-SigLIP2-Hub.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    return "Test-Tiny-SigLIP2-Hub"


def test_hub_tokenizer_offline_is_one_line(offline_hub, hub_tokenizer_arch):
    with pytest.raises(UsageError) as err:
        farslip.load_model(hub_tokenizer_arch)
    message = str(err.value)
    assert "\n" not in message
    assert "farslip-test/tokenizer-not-cached" in message and "Hugging Face cache" in message


@pytest.mark.parametrize("family", ["vit", "vit-l14"])
def test_long_text_on_openai_style_text_towers(tiny_towers, family):
    model, _, _, _ = farslip.load_model(tiny_towers[family])
    farslip.models.extend_text_context(model)
    tok = open_clip.get_tokenizer(tiny_towers[family], context_length=LONG_CONTEXT)
    assert model.context_length == LONG_CONTEXT
    with torch.no_grad():
        assert model.encode_text(tok(["a very long caption " * 20])).shape[0] == 1


def test_long_text_on_a_custom_text_tower_with_77_positions(tmp_path, tiny_towers):
    """A CustomTextCLIP (text in ``model.text``) whose text tower is CLIP's shape takes the stretch too."""
    cfg = json.loads(json.dumps(tower_configs(tmp_path)["Test-Tiny-PE"]))
    cfg["text_cfg"]["context_length"] = 77
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "Test-Tiny-PE-77.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    model = farslip.load_model("Test-Tiny-PE-77")[0]
    farslip.models.extend_text_context(model)
    assert text_tower(model).positional_embedding.shape[0] == model.context_length == LONG_CONTEXT
    tok = open_clip.get_tokenizer("Test-Tiny-PE-77", context_length=LONG_CONTEXT)
    with torch.no_grad():
        assert model.encode_text(tok(["a harbor"])).shape == (1, 48)


@pytest.mark.parametrize("family,positions,pool", [("siglip2", 16, "'last'"), ("pe-core", 32, "'argmax'")])
def test_long_text_refused_in_one_line(tiny_towers, family, positions, pool):
    model = farslip.load_model(tiny_towers[family])[0]
    with pytest.raises(UsageError) as err:
        check_long_text(model, tiny_towers[family])
    message = str(err.value)
    assert "\n" not in message and f"has {positions} positions and pools {pool}" in message
    assert "model.long_text: false" in message
