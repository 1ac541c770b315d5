"""Shared fixtures: tiny open_clip architectures registered for the tests, seeded randomness."""
from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch

torch.set_num_threads(2)

from support.towers import TINY_CFG  # noqa: E402 (re-exported: tests import it from conftest)


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


@pytest.fixture(scope="session")
def tiny_towers(tmp_path_factory, tiny_arch):
    """Every tower family in small (tests/support/towers.py): family -> registered architecture name, plus the
    folder a spawned process hands to ``register_tiny_towers``."""
    from support.towers import register_tiny_towers

    folder = tmp_path_factory.mktemp("towers")
    archs = register_tiny_towers(folder)
    return {**archs, "_folder": str(folder)}
