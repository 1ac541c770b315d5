"""Every recipe in configs/ parses, carries the official hyperparameters, and runs a few steps on tiny data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from farslip.models.lineage import choose_quick_gelu
from farslip.train import load_config, train

from support.fixtures import REPO, tiny_overrides

RECIPES = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "ablations").glob("*.yaml"))


def test_official_hyperparameters():
    s1 = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml")
    assert (s1.model.arch, s1.model.pretrained, s1.model.quick_gelu) == ("ViT-B-16", "openai", None)
    # automatic: OpenAI's weights train with QuickGELU, as the official --force-quick-gelu
    assert choose_quick_gelu(s1.model.quick_gelu, s1.model.arch, pretrained_tag=s1.model.pretrained) is True
    assert (s1.optim.lr, s1.optim.weight_decay, s1.optim.warmup, s1.optim.epochs, s1.optim.batch_size) == \
        (1e-6, 1.0, 1000, 1, 40)
    assert (s1.data.views, s1.data.num_crops, s1.data.crop_scale, s1.data.num_samples) == ("crops", 4, [0.3, 0.7], 5070186)
    s2 = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml")
    assert (s2.optim.lr, s2.optim.warmup, s2.optim.epochs, s2.model.long_text) == (4e-9, 250, 10, True)
    assert (s2.data.views, s2.data.max_regions, s2.data.min_region_size, s2.data.max_region_size) == ("regions", 4, 64, 1024)
    b32 = load_config(REPO / "configs" / "stage2_vitb32_mgrs.yaml")
    assert (b32.model.arch, b32.model.long_text, b32.optim.lr) == ("ViT-B-32", False, 4e-9)


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", ["optim.lr=5e-6", "data.views=grids"])
    assert cfg.optim.lr == 5e-6 and cfg.data.views == "grids"
    with pytest.raises(KeyError, match="lrr"):
        load_config(REPO / "configs" / "stage1_vitb16_rs5m.yaml", ["optim.lrr=1"])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_a_few_steps(tmp_path, tiny_arch, recipe):
    cfg = load_config(recipe)
    stage = 2 if cfg.data.views == "regions" else 1
    cfg = load_config(recipe, tiny_overrides(tmp_path, stage))
    result = train(cfg)
    assert result["steps"] == 2
    lines = [json.loads(ln) for ln in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2]
    expected = {"vanilla": {"global_itc"}, "stage1": {"global_itc", "distill"}, "stage2": {"global_itc", "region_itc"}}
    assert expected[cfg.objective.preset] <= set(lines[0])
    assert all(ln["total"] == ln["total"] for ln in lines)  # not NaN


def test_large_tower_recipes():
    s1 = load_config(REPO / "configs" / "stage1_siglip2_vitb16_rs5m.yaml")
    assert (s1.model.arch, s1.model.pretrained, s1.model.quick_gelu, s1.objective.global_loss) == \
        ("ViT-B-16-SigLIP2", "webli", None, None)  # quick_gelu null: from the weights
    assert (s1.optim.lr, s1.optim.batch_size, s1.data.num_crops) == (1e-6, 40, 4)  # the paper's ViT-B/16 values
    s2 = load_config(REPO / "configs" / "stage2_siglip2_vitb16_mgrs.yaml")
    assert (s2.model.long_text, s2.objective.preset) == (False, "stage2")
    l1 = load_config(REPO / "configs" / "stage1_vitl14_336_rs5m.yaml")
    assert (l1.model.arch, l1.model.pretrained, l1.optim.fsdp, l1.optim.precision) == \
        ("ViT-L-14-336", "openai", True, "amp_bf16")
    l2 = load_config(REPO / "configs" / "stage2_vitl14_336_mgrs.yaml")
    assert (l2.model.long_text, l2.optim.fsdp, l2.optim.lr) == (True, True, 4e-9)


@pytest.mark.parametrize("recipe,family", [("stage1_siglip2_vitb16_rs5m", "siglip2"),
                                           ("stage2_siglip2_vitb16_mgrs", "siglip2"),
                                           ("stage1_vitl14_336_rs5m", "vit-l14"),
                                           ("stage2_vitl14_336_mgrs", "vit-l14")])
def test_large_tower_recipe_runs_on_its_family(tmp_path, tiny_towers, recipe, family):
    """Each recipe on a tiny tower of its own family: the sigmoid loss chosen by SigLIP weights (the logit bias
    trains and is logged), FSDP on one process for the ViT-L/14 ones (long text in stage 2)."""
    path = REPO / "configs" / f"{recipe}.yaml"
    cfg = load_config(path, tiny_overrides(tmp_path, 2 if "stage2" in recipe else 1, arch=tiny_towers[family]))
    assert train(cfg)["steps"] == 2
    lines = [json.loads(ln) for ln in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
    assert ("logit_bias" in lines[0]) == (family == "siglip2")
    if cfg.optim.fsdp:
        assert (Path(cfg.run.out) / "checkpoints" / "step_00000002.dcp").is_dir()
