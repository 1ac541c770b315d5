"""Fine-tuning trains with the activation the weights were trained with, as evaluation loads them: QuickGELU for
OpenAI's lineage, GELU for open_clip's laion tags and the GELU releases; forcing the other one warns."""
from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import pytest
import torch

import farslip
from farslip.models.checkpoint_io import META_KEY
from farslip.models.lineage import choose_quick_gelu, follow_entry
from farslip.models.registry import get_entry
from farslip.train import load_config, train

from support.fixtures import REPO, tiny_overrides

RECIPE = REPO / "configs" / "stage1_vitb16_rs5m.yaml"


def test_a_forced_activation_the_tag_contradicts_warns():
    with pytest.warns(UserWarning, match="quick_gelu=True contradicts open_clip's ViT-B-32 'laion2b_s34b_b79k'"):
        assert choose_quick_gelu(True, "ViT-B-32", pretrained_tag="laion2b_s34b_b79k") is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_quick_gelu(None, "ViT-B-32", pretrained_tag="laion2b_s34b_b79k") is False  # automatic
        assert choose_quick_gelu(None, "ViT-B-16", pretrained_tag="openai") is True
        assert choose_quick_gelu(True, "ViT-B-16", pretrained_tag="openai") is True  # agrees: no warning


@pytest.mark.parametrize("name,lineage", [("georsclip-vit-h-14", False), ("skyclip-vit-b-32", False),
                                          ("farslip2-vit-b-16", True)])
def test_released_models_follow_the_registry_and_a_contradiction_warns(name, lineage):
    entry = get_entry(name)
    assert follow_entry(None, entry.quick_gelu, entry.name) is lineage
    with pytest.warns(UserWarning, match=f"contradicts the released model {name}"):
        assert follow_entry(not lineage, entry.quick_gelu, entry.name) is (not lineage)


def test_the_recipes_follow_the_weights_and_null_is_accepted():
    for recipe in ("stage1_vitb16_rs5m.yaml", "stage2_vitb16_mgrs.yaml", "stage1_vitb32_rs5m.yaml"):
        assert load_config(REPO / "configs" / recipe).model.quick_gelu is None
    assert load_config(RECIPE, ["model.quick_gelu=null"]).model.quick_gelu is None
    assert load_config(RECIPE, ["model.quick_gelu=false"]).model.quick_gelu is False


@pytest.fixture
def gelu_tag(tmp_path, tiny_arch, monkeypatch):
    """A pretrained tag of the tiny architecture whose weights were trained with GELU (as open_clip's laion tags
    are), served from a local file the way open_clip serves any tag."""
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_arch, quick_gelu=False)
    path = tmp_path / "gelu_weights.pt"
    torch.save(model.state_dict(), path)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED.setdefault(tiny_arch, {}), "lab_gelu",
                        {"file": str(path), "quick_gelu": False})
    return "lab_gelu"


def _activation(model) -> str:
    mlp = model.visual.transformer.resblocks[0].mlp
    return type(mlp.gelu).__name__


def test_fine_tuning_a_gelu_tag_trains_with_gelu_and_resumes_with_it(tmp_path, tiny_arch, gelu_tag):
    over = tiny_overrides(tmp_path, 1, steps=3)
    over["model"]["pretrained"] = gelu_tag
    over["run"].update(stop_after=2)
    cfg = load_config(RECIPE, over)
    assert cfg.model.quick_gelu is None  # the recipe's automatic choice
    train(cfg)
    saved = torch.load(Path(cfg.run.out) / "checkpoints" / "step_00000002.pt", weights_only=True)
    assert saved[META_KEY]["quick_gelu"] is False
    cfg.run.stop_after = None
    train(cfg, resume="auto")  # rebuilt with the checkpoint's activation, not the architecture's QuickGELU
    final, *_ = farslip.load_model(checkpoint=Path(cfg.run.out) / "final.pt")
    assert final.farslip_quick_gelu is False and _activation(final) == "GELU"


def test_forcing_quick_gelu_on_a_gelu_tag_trains_as_asked_with_a_warning(tmp_path, tiny_arch, gelu_tag):
    over = tiny_overrides(tmp_path, 1, steps=1)
    over["model"].update(pretrained=gelu_tag, quick_gelu=True)
    with pytest.warns(UserWarning, match=f"quick_gelu=True contradicts open_clip's {tiny_arch} 'lab_gelu'"):
        train(load_config(RECIPE, over))
    final, *_ = farslip.load_model(checkpoint=Path(over["run"]["out"]) / "final.pt")
    assert final.farslip_quick_gelu is True and _activation(final) == "QuickGELU"
