"""Tiny SAM 3 models for the tests: transformers' ``Sam3Model`` at farslip's tiny size with random weights, and
the official checkpoint format (``sam3.pt``) of the official code's tiny model (tests/data/sam3_official)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from farslip.models.sam3 import TINY, random_sam3

OFFICIAL = Path(__file__).resolve().parent.parent / "data" / "sam3_official"


def lively_tiny_sam3(seed: int = 0, spread: float = 0.4):
    """A tiny random SAM 3 whose outputs vary (transformers' initialisation gives every object score about 0.25
    and every presence 0.5): N(0, spread^2) added to every weight."""
    model = random_sam3("tiny", seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * spread)
    return model


def official_module():
    spec = importlib.util.spec_from_file_location("sam3_official_make", OFFICIAL / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_state() -> dict[str, torch.Tensor]:
    """The official tiny model's weights under the official names (``detector.`` as in sam3.pt, plus a tracker
    tensor that the image model does not use)."""
    keys = json.loads((OFFICIAL / "keys.json").read_text())
    weights = official_module().official_weights(keys)
    return {**{f"detector.{k}": v for k, v in weights.items()}, "tracker.maskmem_tpos_enc": torch.zeros(7, 1, 1, 64)}


def tiny_config_json() -> str:
    """The Hub's config.json form of the tiny size."""
    return json.dumps({"model_type": "sam3", **TINY})


def write_official_checkpoint(folder: Path, name: str = "sam3.pt", *, config: bool = True) -> Path:
    """``folder/sam3.pt`` (torch.save of the official state) and, unless told not to, its config.json beside."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    state = official_state()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    if config:
        (folder / "config.json").write_text(tiny_config_json())
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a tiny SAM 3 runs: its thousands of small kernels are dominated by thread
    hand-offs (45x slower with two threads on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
