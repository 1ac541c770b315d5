"""bf16 autocast for OVSS and segment: opt-in, really bf16, close to fp32, and the default path untouched."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import from_origin

import farslip
from farslip.models.precision import autocast_for
from farslip.engine import class_scores, predict_classes, sliding_window_logits


def _inputs(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(6, model.text_projection.shape[1], generator=g), dim=-1)
    images = [torch.randn(3, 64, 96, generator=g), torch.randn(3, 48, 40, generator=g)]
    return query, images


def test_bf16_autocast_is_active_on_cpu_and_default_is_fp32(tiny_model):
    model, _, _ = tiny_model
    a = torch.randn(4, 4)
    with autocast_for(model, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    for amp in (None, "auto", False, "off", True, "fp16"):  # on the CPU none of these changes the arithmetic
        with autocast_for(model, amp):
            assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be"):
        with autocast_for(model, "int8"):
            pass


def test_bf16_window_logits_close_to_fp32(tiny_model):
    model, _, _ = tiny_model
    model.eval()
    query, images = _inputs(model)
    with torch.no_grad():
        ref = sliding_window_logits(model, images, query, crop=32, stride=16)
        fast = sliding_window_logits(model, images, query, crop=32, stride=16, amp="bf16")
    for a, b in zip(fast, ref):
        assert a.dtype == torch.float32
        assert not torch.equal(a, b)  # bf16 really ran
        # cosines in [-1, 1]; bf16 keeps ~3 significant digits through a few blocks
        torch.testing.assert_close(a, b, rtol=0, atol=0.05)
        owner = torch.arange(query.shape[0])
        agree = (predict_classes(class_scores(a, owner, 6)) == predict_classes(class_scores(b, owner, 6)))
        assert agree.float().mean() > 0.9


def test_segment_bf16_option(tmp_path, tiny_model):
    from farslip.cli import main

    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    arr = np.random.default_rng(4).integers(0, 255, (3, 64, 80), dtype=np.uint8)
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", height=64, width=80, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 1, 1)) as dst:
        dst.write(arr)
    maps = {}
    for amp in ("auto", "bf16"):
        assert main(["segment", str(tmp_path / "s.tif"), "--checkpoint", str(ckpt), "--classes", "a", "b", "c",
                     "--out", str(tmp_path / amp), "--amp", amp, "--no-progress"]) == 0
        with rasterio.open(tmp_path / amp / "s.tif") as src:
            maps[amp] = src.read(1)
    assert np.mean(maps["auto"] == maps["bf16"]) > 0.9



def test_bf16_on_a_cpu_without_native_bf16_warns(tiny_model, monkeypatch):
    from farslip.models import precision as common

    model, _, _ = tiny_model
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="emulated"):
        with common.autocast_for(model, "bf16"):
            pass


def test_cli_points_to_bf16_on_a_bf16_cpu(tmp_path, tiny_model, monkeypatch, capsys):
    from farslip.cli import main
    from farslip.models import precision as common

    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    from PIL import Image
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    args = ["segment", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--classes", "a", "b", "--device", "cpu",
            "--no-progress"]
    for native, amp, expected in ((True, "auto", True), (False, "auto", False), (True, "off", False)):
        monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
        assert main(args + ["--out", str(tmp_path / f"o{native}{amp}"), "--amp", amp]) == 0
        assert ("--amp bf16" in capsys.readouterr().err) == expected
