"""The activation chosen by the weights (not forced), and RS-OVSS's text length by method name."""
from __future__ import annotations

import json
import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

import farslip
from farslip.models import CheckpointError
from farslip.models.lineage import choose_quick_gelu, resize_text_positions
from farslip.models.long_text import stretch_positional_embedding

GELU_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def gelu_arch(tmp_path_factory):
    """The tiny ViT with no activation in its config (as open_clip's plain ViT-B-16 has none)."""
    d = tmp_path_factory.mktemp("gelu_configs")
    (d / "Test-Tiny-ViT-plain.json").write_text(json.dumps(GELU_CFG))
    open_clip.add_model_config(d)
    return "Test-Tiny-ViT-plain"


def _uses_quick_gelu(model) -> bool:
    act = model.visual.transformer.resblocks[0].mlp.gelu
    return isinstance(act, open_clip.transformer.QuickGELU)


def _foreign_file(arch, path):
    model, *_ = farslip.load_model(arch, quick_gelu=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return path


def test_a_file_that_does_not_say_gets_quick_gelu_with_a_warning(gelu_arch, tmp_path):
    path = _foreign_file(gelu_arch, tmp_path / "remoteclip-like.pt")
    with pytest.warns(UserWarning, match="does not say which activation.*assuming QuickGELU"):
        model, *_ = farslip.load_model(gelu_arch, path)
    assert _uses_quick_gelu(model) and model.farslip_quick_gelu is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice is not a guess: no warning
        plain, *_ = farslip.load_model(gelu_arch, path, quick_gelu=False)
    assert not _uses_quick_gelu(plain)


def test_random_initialisation_follows_the_config(gelu_arch, tiny_arch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _uses_quick_gelu(farslip.load_model(gelu_arch)[0])
        assert _uses_quick_gelu(farslip.load_model(tiny_arch)[0])   # its config says quick_gelu


def test_a_farslip_checkpoint_keeps_its_recorded_activation(gelu_arch, tmp_path):
    model, *_ = farslip.load_model(gelu_arch, quick_gelu=False)
    farslip.save_model(model, tmp_path / "gelu.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, *_ = farslip.load_model(checkpoint=tmp_path / "gelu.safetensors")
    assert not _uses_quick_gelu(again) and again.farslip_quick_gelu is False
    with pytest.warns(UserWarning, match="records quick_gelu=False; using it"):
        forced, *_ = farslip.load_model(checkpoint=tmp_path / "gelu.safetensors", quick_gelu=True)
    assert not _uses_quick_gelu(forced)


def test_pretrained_tags_and_openai_archives_decide_by_lineage():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_quick_gelu(None, "ViT-B-16", pretrained_tag="openai") is True
        assert choose_quick_gelu(None, "ViT-B-16", pretrained_tag="laion2b_s34b_b88k") is False
        assert choose_quick_gelu(None, "ViT-B-16", torchscript=True, checkpoint="ViT-B-16.pt") is True
        assert choose_quick_gelu(None, "ViT-B-16-quickgelu", checkpoint="x.pt") is True
    # forcing the activation the weights were not trained with is done as asked, with a warning (issue 24)
    with pytest.warns(UserWarning, match="quick_gelu=False contradicts open_clip's ViT-B-16 'openai'"):
        assert choose_quick_gelu(False, "ViT-B-16", pretrained_tag="openai") is False


# ------------------------------------------------------------------------------------------------ RS-OVSS text

@pytest.fixture
def long_text_file(tiny_arch, tmp_path):
    """An official long-text checkpoint: 248-row positional_embedding and positional_embedding_res."""
    model, *_ = farslip.load_model(tiny_arch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    long = stretch_positional_embedding(state["positional_embedding"])
    state["positional_embedding"] = long + 0.01 * torch.randn(long.shape, generator=g)
    state["positional_embedding_res"] = long + 0.02 * torch.randn(long.shape, generator=g)
    torch.save(state, tmp_path / "FarSLIP2_tiny.pt")
    return tmp_path / "FarSLIP2_tiny.pt", state


def test_rs_ovss_resizes_text_positions_by_method_name(tiny_arch, long_text_file):
    path, state = long_text_file
    default, *_ = farslip.load_model(tiny_arch, path)              # read off the file: 248, folded
    long, _, _, tok = farslip.load_model(tiny_arch, path, rs_ovss_method="FarSLIP2")
    assert long.context_length == 248 and tok("road").shape[-1] == 248
    torch.testing.assert_close(long.positional_embedding, default.positional_embedding)
    short, _, _, tok = farslip.load_model(tiny_arch, path, rs_ovss_method="FarSLIP1")
    assert short.context_length == 77 and tok("road").shape[-1] == 77
    # open_clip fork resize_text_pos_embed: the FIRST tensor, linearly resized 248 -> 77; the _res one dropped
    expected = F.interpolate(state["positional_embedding"].reshape(1, 248, -1).permute(0, 2, 1), size=77,
                             mode="linear", align_corners=False).permute(0, 2, 1)[0]
    torch.testing.assert_close(short.positional_embedding.detach(), expected, rtol=0, atol=0)
    with torch.no_grad():
        assert torch.isfinite(short.encode_text(tok(["a road"]))).all()


def test_rs_ovss_long_build_of_a_short_file_is_refused(tiny_arch, tmp_path):
    model, *_ = farslip.load_model(tiny_arch)
    torch.save(model.state_dict(), tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="uninitialised rows 20..247"):
        farslip.load_model(tiny_arch, tmp_path / "short.pt", rs_ovss_method="LRSCLIP")
    with pytest.raises(ValueError, match="unknown RS-OVSS method 'nope'"):
        farslip.load_model(tiny_arch, tmp_path / "short.pt", rs_ovss_method="nope")
    same = resize_text_positions(model.state_dict(), 77)
    torch.testing.assert_close(same["positional_embedding"], model.state_dict()["positional_embedding"])


def test_rs_ovss_method_sets_the_activation_as_rs_ovss(gelu_arch, tmp_path):
    """RS-OVSS forces QuickGELU only for FarSLIP/LRSCLIP; GeoRSCLIP & co. run with their config's GELU there."""
    path = _foreign_file(gelu_arch, tmp_path / "georsclip-like.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _uses_quick_gelu(farslip.load_model(gelu_arch, path, rs_ovss_method="GeoRSCLIP")[0])
        assert _uses_quick_gelu(farslip.load_model(gelu_arch, path, rs_ovss_method="FarSLIP1")[0])
