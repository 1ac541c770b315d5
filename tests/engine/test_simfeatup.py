"""SimFeatUp (SegEarth-OV's JBUOne): the architecture against a transcription of the official forward, and its
checkpoint loaded safely, on random weights saved in the official key layout."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from farslip.engine.simfeatup import SimFeatUp, SimFeatUpError, load_simfeatup
from support.reference_official_ovss import jbu_one_reference


def _random_upsampler(dim=8, seed=0):
    torch.manual_seed(seed)
    m = SimFeatUp(dim).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def test_forward_equals_the_official_forward():
    m = _random_upsampler()
    feats, image = torch.randn(2, 8, 3, 4), torch.randn(2, 3, 48, 64)   # not square, batch of two
    with torch.no_grad():
        got = m(feats, image)
        want = torch.cat([jbu_one_reference(m.state_dict(), feats[i:i + 1], image[i:i + 1]) for i in range(2)])
    assert got.shape == (2, 8, 48, 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _lightning_checkpoint(module, path, extra=None):
    """The layout of SegEarth-OV's xclip_jbu_one_million_aid.ckpt: Lightning's dict, keys under 'upsampler.'."""
    ckpt = {"state_dict": {f"upsampler.{k}": v for k, v in module.state_dict().items()}, "epoch": 7,
            "pytorch-lightning_version": "1.9.0"}
    ckpt.update(extra or {})
    torch.save(ckpt, path)
    return path


def test_checkpoint_loads_by_path_with_weights_only(tmp_path):
    m = _random_upsampler(dim=16, seed=1)
    path = _lightning_checkpoint(m, tmp_path / "jbu.ckpt", {"hyper_parameters": argparse.Namespace(lr=1e-3)})
    loaded = load_simfeatup(path, feat_dim=16)
    assert not loaded.training
    feats, image = torch.randn(1, 16, 3, 3), torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feats, image), m(feats, image), rtol=0, atol=0)


class _Payload:
    def __reduce__(self):
        return os.system, ("touch SIMFEATUP_PAYLOAD_RAN",)


def test_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _lightning_checkpoint(_random_upsampler(dim=4), tmp_path / "evil.ckpt", {"callbacks": _Payload()})
    load_simfeatup(path, feat_dim=4)
    assert not (tmp_path / "SIMFEATUP_PAYLOAD_RAN").exists()


def test_unusable_files_are_one_clear_error(tmp_path):
    with pytest.raises(SimFeatUpError, match="no such file"):
        load_simfeatup(tmp_path / "absent.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(SimFeatUpError, match="not a checkpoint: a text file"):
        load_simfeatup(tmp_path / "junk.ckpt")
    path = _lightning_checkpoint(_random_upsampler(dim=8), tmp_path / "jbu8.ckpt")
    with pytest.raises(SimFeatUpError, match="upsample 8-channel features but the model's embeddings have 512"):
        load_simfeatup(path, feat_dim=512)
    torch.save({"state_dict": {"model.conv.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(SimFeatUpError, match="not a SimFeatUp"):
        load_simfeatup(tmp_path / "other.ckpt")
