"""The whole config is checked before a run writes anything: every mistake is one line, exit status 2, and no run
folder is left behind (the corrected command then runs without --overwrite)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from farslip.train import load_config
from farslip.train import checks

from support.fixtures import REPO, tiny_overrides
from support.hostile import assert_user_error, run_cli

RECIPE = REPO / "configs" / "stage1_vitb16_rs5m.yaml"


def _args(over: dict, *extra: str) -> list[str]:
    args = ["train", "--config", str(RECIPE)]
    for section, values in over.items():
        for k, v in values.items():
            args += ["--set", f"{section}.{k}={'null' if v is None else json.dumps(v)}"]
    return args + list(extra)


@pytest.fixture
def over(tmp_path, tiny_arch):
    return tiny_overrides(tmp_path, 1, steps=1)


CASES = [
    (["data.views=crop"], ["--set data.views", "none, crops, grids, regions", "'crop'"]),
    (["optim.precision=fp64"], ["--set optim.precision", "'fp64'"]),
    (["objective.distill=roi2pool"], ["--set objective.distill", "roi2pooled", "'roi2pool'"]),
    (["objective.preset=stage3"], ["--set objective.preset", "stage1, stage2, vanilla", "'stage3'"]),
    (["data.views=none"], ["data.views=none", "distills crops"]),
    (["objective.preset=stage2"], ["use data.views=regions"]),
    (["data.crop_scale=[0.7, 0.3]"], ["data.crop_scale"]),
    (["model.arch=ViT-Z-99"], ["model.arch", "ViT-Z-99"]),
    (["model.pretrained=nope"], ["nope", "not an open_clip pretrained tag"]),
    (["model.pretrained=/nowhere/weights.pt"], ["/nowhere/weights.pt", "no such checkpoint file"]),
    (["data.train=/nowhere/shard-{0000..0003}.tar"], ["data.train", "0 of 4 shards", "/nowhere/shard-0000.tar"]),
    (["run.val_every=1", "run.val_csv=/nowhere/val.csv"], ["run.val_csv", "/nowhere/val.csv"]),
    (["run.device=cuda:7"], ["run.device=cuda:7"]),
    (["optim.accum_steps=0"], ["optim.accum_steps", "at least 1"]),
]


@pytest.mark.parametrize("sets,fragments", CASES, ids=[c[0][0] for c in CASES])
def test_a_bad_value_is_one_line_and_leaves_no_run_folder(capsys, over, sets, fragments):
    if sets == ["run.device=cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    argv = _args(over)
    for s in sets:
        argv += ["--set", s]
    assert_user_error(run_cli(capsys, *argv), *fragments)
    assert not Path(over["run"]["out"]).exists()


def test_the_corrected_command_runs_without_overwrite(capsys, over):
    """A mistake found while building the job (here: starting weights that are not there) leaves nothing behind."""
    assert run_cli(capsys, *_args(over), "--set", "model.pretrained=/nowhere/weights.pt").code == 2
    assert run_cli(capsys, *_args(over)).code == 0


def test_cuda_without_a_gpu_is_one_line(capsys, over):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert_user_error(run_cli(capsys, *_args(over), "--set", "run.device=cuda"), "run.device=cuda", "no CUDA GPU")
    assert not Path(over["run"]["out"]).exists()


def test_wandb_missing_is_one_line_with_the_hint(capsys, over, monkeypatch):
    monkeypatch.setattr(checks, "installed", lambda name: name != "wandb")
    assert_user_error(run_cli(capsys, *_args(over), "--set", "run.wandb=true"), "run.wandb=true",
                      "pip install 'farslip[wandb]'")
    assert not Path(over["run"]["out"]).exists()


def test_an_open_clip_tag_offline_is_one_line(capsys, over, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = _args(over, "--set", "model.arch=ViT-B-32", "--set", "model.pretrained=laion2b_s34b_b79k")
    assert_user_error(run_cli(capsys, *argv), "ViT-B-32", "laion2b_s34b_b79k", "HF_HUB_OFFLINE")
    assert not Path(over["run"]["out"]).exists()


def test_a_tab_separated_csv_with_an_escaped_separator(tmp_path, tiny_arch, capsys):
    from PIL import Image

    folder = tmp_path / "tsv"
    folder.mkdir()
    rows = ["path\ttext"]
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(folder / f"{i}.png")
        rows.append(f"{i}.png\ta red square number {i}")
    (folder / "pairs.tsv").write_text("\n".join(rows) + "\n")
    over = tiny_overrides(tmp_path, 1, steps=1)
    over["data"] = {"kind": "csv", "train": str(folder / "pairs.tsv"), "views": "none", "workers": 0,
                    "image_key": "path", "caption_key": "text"}
    over["objective"] = {"preset": "vanilla"}
    argv = _args(over, "--set", "data.csv_sep=\\t")
    assert load_config(RECIPE, ["data.csv_sep=\\t"]).data.csv_sep == "\t"
    assert run_cli(capsys, *argv).code == 0
    assert json.loads((Path(over["run"]["out"]) / "summary.json").read_text())["steps"] == 1
    # without the separator, the header is one column: one line naming the key and what the file has
    out = tmp_path / "again"
    assert_user_error(run_cli(capsys, *_args(over, "--set", "data.csv_sep=,", "--set", f"run.out={out}")),
                      "data.image_key", "'path'", "pairs.tsv")
    assert not out.exists()
