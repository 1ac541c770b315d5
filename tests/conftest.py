"""Shared fixtures: tiny open_clip architectures registered for the tests, seeded randomness."""
from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch

torch.set_num_threads(2)

# A ViT small enough for CPU tests but with every structural feature of ViT-B (CLS token, ln_pre/ln_post,
# projections, multi-head attention). 32 px / patch 8 -> a 4 x 4 grid.
TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session", autouse=True)
def tiny_arch(tmp_path_factory):
    """Register ``Test-Tiny-ViT`` with open_clip (the same mechanism users have for their own configs)."""
    d = tmp_path_factory.mktemp("model_configs")
    (d / "Test-Tiny-ViT.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(d)
    return "Test-Tiny-ViT"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """farslip's caches (text embeddings) in a folder of the test session's, never the user's ~/.cache/farslip;
    commands the tests start in a subprocess inherit it."""
    folder = tmp_path_factory.mktemp("farslip-cache")
    before = os.environ.get("FARSLIP_CACHE_DIR")
    os.environ["FARSLIP_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("FARSLIP_CACHE_DIR", None)
    else:
        os.environ["FARSLIP_CACHE_DIR"] = before


@pytest.fixture
def tiny_model(tiny_arch):
    import farslip

    torch.manual_seed(0)
    model, _, preprocess, tokenizer = farslip.load_model(tiny_arch)
    return model, preprocess, tokenizer
