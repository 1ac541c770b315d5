"""Round trips through every checkpoint form load_model accepts, and the errors it gives."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import farslip
from farslip.models import CheckpointError, read_checkpoint
from farslip.models.long_text import stretch_positional_embedding


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _outputs_equal(a, b, tokenizer):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    t = tokenizer(["a satellite image of a harbour", "farmland"])
    assert torch.equal(a.encode_image(x), b.encode_image(x))
    assert torch.equal(a.encode_text(t), b.encode_text(t))


@pytest.mark.parametrize("form", ["raw", "state_dict", "ddp", "safetensors"])
def test_foreign_forms_round_trip(tmp_path, tiny_arch, tiny_model, form):
    model, _, tokenizer = tiny_model
    sd = model.state_dict()
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    if form == "raw":
        torch.save(sd, path)
    elif form == "state_dict":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif form == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 1}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded, _, _, tok = farslip.load_model(tiny_arch, path)
    _same_weights(model, loaded)
    _outputs_equal(model, loaded, tok)
    assert loaded.context_length == 77 and tok.context_length == 77


def test_arch_inferred_from_shapes(tmp_path, tiny_arch, tiny_model):
    model, _, _ = tiny_model
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded, *_ = farslip.load_model(None, tmp_path / "w.pt")
    assert loaded.farslip_arch == tiny_arch
    _same_weights(model, loaded)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_farslip_checkpoint_describes_itself(tmp_path, tiny_model, suffix):
    model, _, _ = tiny_model
    farslip.extend_text_context(model, 248)
    path = farslip.save_model(model, tmp_path / f"model{suffix}")
    loaded, _, _, tok = farslip.load_model(checkpoint=path)  # no architecture named
    _same_weights(model, loaded)
    assert loaded.context_length == 248 and tok.context_length == 248
    assert tok(["x"]).shape == (1, 248)


def test_farslip_checkpoint_carries_unregistered_arch(tmp_path, tiny_model):
    """A checkpoint of an architecture registered in another process still loads: it carries its config."""
    import open_clip

    model, _, _ = tiny_model
    path = farslip.save_model(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["farslip_meta"]["arch"] = "Somebody-Else-Tiny"
    torch.save(payload, path)
    assert open_clip.get_model_config("Somebody-Else-Tiny") is None
    loaded, *_ = farslip.load_model(checkpoint=path)
    assert loaded.farslip_arch == "Somebody-Else-Tiny"
    _same_weights(model, loaded)


def test_official_long_text_checkpoint_is_folded(tmp_path, tiny_arch, tiny_model):
    """FarSLIP releases store positional_embedding + positional_embedding_res (each 248 rows) in DDP form."""
    model, _, _ = tiny_model
    sd = dict(model.state_dict())
    stretched = stretch_positional_embedding(sd["positional_embedding"])
    torch.manual_seed(3)
    res = stretched + 0.01 * torch.randn_like(stretched)  # rows 20.. trained away from the stretch
    sd["positional_embedding"] = stretched
    sd["positional_embedding_res"] = res
    sd["mask1"] = torch.zeros(248, 1)
    sd["mask2"] = torch.zeros(248, 1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 10}, tmp_path / "long.pt")

    loaded, _, _, tok = farslip.load_model(tiny_arch, tmp_path / "long.pt")
    assert loaded.context_length == 248 and tok.context_length == 248
    expected = torch.cat([stretched[:20], res[20:]])
    assert torch.equal(loaded.positional_embedding.data, expected)

    # Numerically identical to the official forward: x + pos * mask1 + res * mask2.
    text = tok(["a satellite image of a storage tank next to a harbour"])
    mask1 = (torch.arange(248) < 20).float()[:, None]
    x = loaded.token_embedding(text) + stretched * mask1 + res * (1 - mask1)
    x = loaded.transformer(x, attn_mask=loaded.attn_mask)
    x = loaded.ln_final(x)[torch.arange(1), text.argmax(dim=-1)] @ loaded.text_projection
    assert torch.allclose(loaded.encode_text(text), x, atol=1e-6)


def test_openai_torchscript_archive(tmp_path, tiny_arch, tiny_model):
    model, _, tokenizer = tiny_model
    torch.jit.save(torch.jit.script(model), tmp_path / "openai.pt")
    loaded, *_ = farslip.load_model(tiny_arch, tmp_path / "openai.pt")
    _same_weights(model, loaded)
    _outputs_equal(model, loaded, tokenizer)


def test_fp16_weights_are_loaded_as_fp32(tmp_path, tiny_arch, tiny_model):
    model, _, _ = tiny_model
    torch.save({k: v.half() for k, v in model.state_dict().items()}, tmp_path / "half.pt")
    loaded, *_ = farslip.load_model(tiny_arch, tmp_path / "half.pt")
    assert loaded.visual.conv1.weight.dtype == torch.float32
    assert torch.equal(loaded.visual.conv1.weight, model.visual.conv1.weight.half().float())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, tiny_arch, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil()}}, f)
    with pytest.raises(CheckpointError, match="never unpickles"):
        farslip.load_model(tiny_arch, path)
    assert "pwned" not in capsys.readouterr().out


def test_wrong_architecture_names_keys_and_fitting_archs(tmp_path, tiny_arch, tiny_model):
    model, _, _ = tiny_model
    sd = dict(model.state_dict())
    sd.pop("visual.ln_post.weight")
    sd["visual.extra_head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as err:
        farslip.load_model("FarSLIP-Tiny", tmp_path / "w.pt")
    msg = str(err.value)
    assert "does not fit architecture FarSLIP-Tiny" in msg
    assert "missing keys" in msg and "visual.ln_post.weight" in msg
    assert "unexpected keys" in msg and "visual.extra_head.weight" in msg
    assert "mis-shaped keys" in msg and " vs model (" in msg
    assert tiny_arch in msg.split("architectures whose shapes fit:")[1]


def test_missing_file_is_named(tmp_path, tiny_arch):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pt")


def test_context_length_override_and_precision(tiny_arch):
    model, _, _, tok = farslip.load_model(tiny_arch, context_length=248, precision="bf16")
    assert model.context_length == 248 and tok.context_length == 248
    assert model.visual.conv1.weight.dtype == torch.bfloat16
