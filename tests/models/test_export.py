"""Models out to the ecosystem: stock open_clip loads the open_clip-hub export (folder and fake hub) with identical
embeddings; the ONNX graphs match PyTorch under onnxruntime; pushing goes through huggingface_hub."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

import farslip
from farslip.models.export import ExportError, export_onnx, export_open_clip_hub, push_folder
from farslip.models.long_text import extend_text_context

TEXTS = ["a satellite image of a harbour", "dense residential area with many red roofs"]


def _embeddings(model, tokenizer):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokenizer(TEXTS))


def _assert_same(farslip_model, farslip_tok, stock_model, stock_tok):
    for a, b in zip(_embeddings(farslip_model, farslip_tok), _embeddings(stock_model.eval(), stock_tok)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("long_text", [False, True], ids=["77-tokens", "248-tokens"])
def test_stock_open_clip_loads_the_folder(long_text, tiny_model, tmp_path):
    model, _, tokenizer = tiny_model
    if long_text:  # FarSLIP's long-text encoder (the released ViT-B/16 models)
        model = extend_text_context(model)
        tokenizer = open_clip.get_tokenizer("Test-Tiny-ViT", context_length=model.context_length)
    out = export_open_clip_hub(model, tmp_path / "export")
    cfg = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["quick_gelu"] is True and cfg["text_cfg"]["context_length"] == model.context_length
    stock, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    stock_tok = open_clip.get_tokenizer(f"local-dir:{out}")
    assert stock.context_length == model.context_length
    _assert_same(model.eval(), tokenizer, stock, stock_tok)


def test_push_then_stock_open_clip_loads_from_the_hub(tiny_model, tmp_path, fake_hub):
    model, _, tokenizer = tiny_model
    out = export_open_clip_hub(model, tmp_path / "export", repo_id="farslip-test/tiny-open-clip")
    url = push_folder(out, "farslip-test/tiny-open-clip")
    assert "farslip-test/tiny-open-clip/commit/" in url
    pushed = fake_hub.repos["farslip-test/tiny-open-clip"]
    assert {"open_clip_config.json", "open_clip_model.safetensors", "README.md"} <= set(
        pushed.commits[pushed.refs["main"]])
    assert "hf-hub:farslip-test/tiny-open-clip" in fake_hub.file("farslip-test/tiny-open-clip", "README.md").decode()
    stock, _, _ = open_clip.create_model_and_transforms("hf-hub:farslip-test/tiny-open-clip")
    _assert_same(model.eval(), tokenizer, stock, open_clip.get_tokenizer("hf-hub:farslip-test/tiny-open-clip"))


def test_export_refuses_a_non_empty_folder_and_leaves_nothing_half_written(tiny_model, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "mine.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_open_clip_hub(tiny_model[0], tmp_path / "export")
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left behind


def test_onnx_towers_match_pytorch(tiny_model, tmp_path):
    import onnxruntime as ort

    model = tiny_model[0]
    summary = export_onnx(model, tmp_path / "onnx")
    assert summary["grid"] == 4 and all(v < 1e-4 for v in summary["max_abs_diff"].values())
    # Independently of the exporter's own check: another batch size (the batch axis is dynamic), real tokens.
    torch.manual_seed(5)
    images = torch.randn(3, 3, 32, 32)
    tokens = tiny_model[2](TEXTS)
    with torch.no_grad():
        want_global = model.encode_image(images)
        want_tokens, want_cls = farslip.dense_features(model, images)
        want_text = model.encode_text(tokens)
    run = {name: ort.InferenceSession(str(tmp_path / "onnx" / name), providers=["CPUExecutionProvider"])
           for name in ("image.onnx", "image_dense.onnx", "text.onnx")}
    (got_global,) = run["image.onnx"].run(None, {"images": images.numpy()})
    got_tokens, got_cls = run["image_dense.onnx"].run(None, {"images": images.numpy()})
    (got_text,) = run["text.onnx"].run(None, {"tokens": tokens.numpy()})
    for got, want in ((got_global, want_global), (got_tokens, want_tokens), (got_cls, want_cls),
                      (got_text, want_text)):
        assert got.shape == tuple(want.shape)
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-5)


def test_onnx_other_input_size(tiny_model, tmp_path):
    import onnxruntime as ort

    model = tiny_model[0]
    summary = export_onnx(model, tmp_path / "onnx", image_size=48)  # a 6 x 6 grid instead of the model's 4 x 4
    assert summary["grid"] == 6
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        want_tokens, want_cls = farslip.dense_features(model, images)  # farslip's resized positional embedding
    session = ort.InferenceSession(str(tmp_path / "onnx" / "image_dense.onnx"), providers=["CPUExecutionProvider"])
    got_tokens, got_cls = session.run(None, {"images": images.numpy()})
    assert torch.allclose(torch.from_numpy(got_tokens), want_tokens, atol=1e-5)
    assert torch.allclose(torch.from_numpy(got_cls), want_cls, atol=1e-5)
    with pytest.raises(ExportError, match="not a multiple of the patch size 8"):
        export_onnx(tiny_model[0], tmp_path / "onnx2", image_size=50)
