"""Config values are checked by their declared types where they enter (``--set`` or a recipe)."""
from __future__ import annotations

import pytest

from farslip.train import load_config

from support.fixtures import REPO

RECIPE = REPO / "configs" / "stage1_vitb16_rs5m.yaml"


@pytest.mark.parametrize("override,message", [
    ("optim.lr=true", "--set optim.lr: expected float, got true (a boolean)"),
    ("optim.batch_size=[1, 2]", "--set optim.batch_size: expected int, got [1, 2] (a list)"),
    ("optim.batch_size=2.5", "--set optim.batch_size: expected int, got 2.5"),
    ("optim.epochs=0", "--set optim.epochs: must be at least 1, got 0"),
    ("run.log_every=-1", "--set run.log_every: must be at least 1"),
    ("optim.lr=null", "--set optim.lr: a value is required"),
    ("optim.lr=.nan", "--set optim.lr: expected float"),
    ("model.quick_gelu=1", "--set model.quick_gelu: expected bool or null, got 1 (an integer)"),
    ("data.crop_scale=[0.3, x]", "--set data.crop_scale: expected list of numbers"),
    ("data.max_bad_fraction=2", "--set data.max_bad_fraction: must be at most 1"),
    ("model=3", "--set model: expected a mapping of model fields"),
])
def test_bad_values_are_refused_naming_the_field(override, message):
    with pytest.raises(ValueError) as info:
        load_config(RECIPE, [override])
    assert message in str(info.value)


def test_values_are_converted_by_declared_type():
    cfg = load_config(RECIPE, ["optim.lr=5e-6", "optim.warmup=1e3", "optim.max_steps=null", "name=2024",
                               "data.crop_scale=[0.2, 1]", "model.quick_gelu=false"])
    assert (cfg.optim.lr, cfg.optim.warmup, cfg.optim.max_steps, cfg.name) == (5e-6, 1000, None, "2024")
    assert isinstance(cfg.optim.warmup, int) and cfg.data.crop_scale == [0.2, 1.0] and cfg.model.quick_gelu is False


def test_a_bad_recipe_value_names_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {RECIPE}\noptim:\n  batch_size: 0\n")
    with pytest.raises(ValueError, match=r"r\.yaml: optim\.batch_size: must be at least 1, got 0"):
        load_config(recipe)


def test_num_crops_of_a_regions_recipe_is_read_as_max_regions_with_a_message(tmp_path):
    from farslip.train import load_config

    # a stage-2 recipe written before the rename (the shipped one, with the old key)
    old = tmp_path / "old.yaml"
    text = (REPO / "configs" / "stage2_vitb16_mgrs.yaml").read_text()
    old.write_text(text.replace("max_regions: 4", "num_crops: 3").replace("base: ", f"base: {REPO / 'configs'}/"))
    with pytest.warns(FutureWarning, match="data.num_crops with views: regions is now data.max_regions"):
        cfg = load_config(old)
    assert cfg.data.max_regions == 3 and cfg.data.num_crops == 4
