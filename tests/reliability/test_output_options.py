"""No output is written over an input, for every option of every command that names an output: the table below has
one case per option -- the output aimed at one of the command's inputs (an image, a listing or STAC file, an
indexed chip, the index itself, a checkpoint, a benchmark table) -- and each case must end in one line naming the
file, exit status 2, before any work, with the input unchanged. ``test_every_output_option_is_in_the_table`` walks
the command line's parsers, so a new output option cannot be added without its case.

An option names an output when it is called ``--out``, ``--output``, ``--report``, ``--png``, ``--json``,
``--sheet``, ``--geojson`` or ``--vector`` and takes a value, or is a positional argument called ``output`` (the
house's names for them).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.hostile import assert_user_error, digest, run_cli, write_geotiff

OUTPUT_FLAGS = {"--out", "--output", "--report", "--png", "--json", "--sheet", "--geojson", "--vector"}
POSITIONAL_OUTPUTS = {"output"}


def output_options() -> set[tuple[str, str]]:
    """``(command, option)`` of every option of the command line that names a file or folder a command writes."""
    from farslip.cli import build_parser

    found = set()

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif action.nargs == 0:
                continue  # a switch (--json of `model list`), not a path
            elif set(action.option_strings) & OUTPUT_FLAGS:
                found.add((" ".join(path), next(o for o in action.option_strings if o in OUTPUT_FLAGS)))
            elif not action.option_strings and action.dest in POSITIONAL_OUTPUTS:
                found.add((" ".join(path), action.dest))

    walk(build_parser(), [])
    return found


# ---------------------------------------------------------------------------------------------------- the inputs

def _png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def _scene(d):
    (d / "in").mkdir(exist_ok=True)
    return write_geotiff(d / "in" / "scene.tif", np.random.default_rng(0).integers(1, 255, (3, 40, 48), np.uint8))


def _stac(d, image):
    """A STAC ItemCollection listing ``image`` (asset ``visual``)."""
    items = d / "items.json"
    items.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a", "assets": {"visual": {"href": Path(image).name}}}]}))
    return items


def _class_map(d):
    import rasterio

    from farslip.infer import cog

    scene = _scene(d)
    with rasterio.open(scene) as like, cog.class_map_writer(d / "classes.tif", like, ["water", "land"],
                                                              np.array([[0, 90, 220], [200, 30, 30]]),
                                                              source=scene) as dst:
        dst.write(np.zeros((40, 48), np.uint8), 1)
    return d / "classes.tif"


def _indexed(d, ckpt):
    from farslip import search

    tiles = d / "tiles"
    tiles.mkdir()
    for i, name in enumerate(("red.png", "green.png")):
        _png(tiles / name, i)
    search.index(tiles, checkpoint=ckpt, progress=False)
    return tiles


def _mgrs(d):
    from support.fixtures import load_maker

    return Path(load_maker("mgrs_quirky")(d / "mgrs"))


def _table(d):
    """An evaluation table that happens to be called results.json (what --output's results.json would replace)."""
    (d / "names.txt").write_text("a\nb\n")
    (d / "results.json").write_text("filepath,label\n")
    return d / "results.json"


TINY_EVAL = ["--model", "Test-Tiny-ViT", "--no-progress"]
CLASSES = ["--classes", "water", "land"]


# (command, option) -> build(tmp_path, checkpoint) -> (argv, the input the output is aimed at[, what the line names
# when the output is aimed at the input's folder])
CASES = {
    ("segment", "--out"): lambda d, ck: (
        ["segment", s := _scene(d), "--checkpoint", ck, *CLASSES, "--out", s.parent, "--no-progress"], s),
    ("segment", "--vector"): lambda d, ck: (
        ["segment", items := _stac(d, _scene(d).rename(d / "scene.tif")), "--checkpoint", ck, *CLASSES,
         "--out", d / "o", "--vector", items, "--no-progress"], items),
    ("locate", "--out"): lambda d, ck: (
        ["locate", "water", _png(d / "tile.png"), v := _png(d / "tile.locate.png", 1), "--checkpoint", ck,
         "--out", d, "--no-progress"], v),
    ("classify", "--out"): lambda d, ck: (
        ["classify", items := _stac(d, _png(d / "img.png")), "--checkpoint", ck, *CLASSES, "--out", items,
         "--no-progress"], items),
    ("view", "--out"): lambda d, ck: (
        ["view", cm := _class_map(d), "--out", _link(d / "map.html", cm)], cm),
    ("search query", "--sheet"): lambda d, ck: (
        ["search", "query", "water", "--index", t := _indexed(d, ck), "--checkpoint", ck, "--sheet",
         t / "red.png"], t / "red.png"),
    ("search query", "--geojson"): lambda d, ck: (
        ["search", "query", "water", "--index", t := _indexed(d, ck), "--checkpoint", ck, "--geojson",
         t / ".farslip-index" / "index.json"], t / ".farslip-index" / "index.json"),
    ("eval classification", "--output"): lambda d, ck: (
        ["eval", "classification", *TINY_EVAL, "--csv", t := _table(d), "--classnames", d / "names.txt",
         "--output", d], t),
    ("eval retrieval", "--output"): lambda d, ck: (
        ["eval", "retrieval", *TINY_EVAL, "--csv", t := _table(d), "--images", d, "--output", d], t),
    ("eval ovss", "--output"): lambda d, ck: (
        ["eval", "ovss", *TINY_EVAL, "--img-dir", _overlays(d), "--ann-dir", d / "ann", "--classes-file",
         d / "names.txt", "--output", d], d / "overlays" / "a.png", "overlays"),
    ("eval all", "--output"): lambda d, ck: (
        ["eval", "all", *TINY_EVAL, "--data-root", b := _bench(d), "--output", b], b / "aid" / "classnames.txt",
        "bench"),
    ("eval compare", "--output"): lambda d, ck: (
        ["eval", "compare", "--protocols", "farslip", "segearth", "--clip-checkpoint", ck, *TINY_EVAL[:2],
         "--no-progress", "--img-dir", _overlays(d), "--ann-dir", d / "ann", "--classes-file",
         _copy_to(d / "names.txt", d / "compare.md"), "--output", d], d / "compare.md"),
    ("eval table", "--json"): lambda d, ck: (
        ["eval", "table", r := _results(d), "--json", r / "results.json"], r / "results.json"),
    ("data build", "--out"): lambda d, ck: (
        ["data", "build", "--format", "dota", "--images", i := _dota(d) / "images", "--labels",
         i.parent / "labelTxt", "--out", i, "--no-progress"], next(i.iterdir()), "images"),
    ("data validate", "--report"): lambda d, ck: (
        ["data", "validate", j := _mgrs(d), "--no-images", "--report", j], j),
    ("data stats", "--png"): lambda d, ck: (["data", "stats", j := _mgrs(d), "--png", j], j),
    ("data stats", "--json"): lambda d, ck: (["data", "stats", j := _mgrs(d), "--json", j], j),
    ("model convert", "output"): lambda d, ck: (["model", "convert", c := _copy(ck, d), c], c),
    ("model export", "output"): lambda d, ck: (
        ["model", "export", c := _copy(ck, d), c, "--format", "open_clip-hub"], c),
}

# (command, option) -> why no input can be under its output
EXEMPT = {
    ("quickstart", "--out"): "reads no file: it generates its world, trains and evaluates in OUT",
    ("data synth", "--out"): "reads no file; an earlier world in OUT is replaced only with --overwrite",
    ("data caption", "--out"): "rewriting the captions of the JSON it reads is its job: without --out in place, "
                               "atomically; --out must be a .json (tested in test_outputs.py)",
}


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _copy_to(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copy(src, dst))


def _copy(ckpt, d: Path) -> Path:
    import shutil

    return Path(shutil.copy(ckpt, d / "model.pt"))


def _overlays(d: Path) -> Path:
    """Images in a folder called overlays/ (where --output's overlays/ would go), their labels and class names."""
    (d / "overlays").mkdir()
    (d / "ann").mkdir()
    _png(d / "overlays" / "a.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(d / "ann" / "a.png")
    (d / "names.txt").write_text("road\nbuilding\n")
    return d / "overlays"


def _bench(d: Path) -> Path:
    (d / "bench" / "aid").mkdir(parents=True)
    (d / "bench" / "aid" / "classnames.txt").write_text("airport\nbeach\n")
    return d / "bench"


def _results(d: Path) -> Path:
    """A folder holding a results.json of `farslip eval` (one classification number)."""
    (d / "eval").mkdir()
    (d / "eval" / "results.json").write_text(json.dumps(
        {"meta": {}, "sections": {"classification": {"aid": {"top1": 0.5}}}}))
    return d / "eval"


def _dota(d: Path) -> Path:
    from support.fixtures import load_maker

    return Path(load_maker("dota")(d / "dota"))


def test_every_output_option_is_in_the_table():
    options = output_options()
    assert options == set(CASES) | set(EXEMPT), (
        f"output options without a case: {sorted(options - set(CASES) - set(EXEMPT))}; cases of no option: "
        f"{sorted((set(CASES) | set(EXEMPT)) - options)}")


@pytest.mark.parametrize("command, option", sorted(CASES), ids=[" ".join(k) for k in sorted(CASES)])
def test_an_output_aimed_at_an_input_is_refused_before_any_work(capsys, tmp_path, tiny_ckpt, command, option):
    argv, victim, *named = CASES[(command, option)](tmp_path, tiny_ckpt)
    victim = Path(victim)
    before = digest(victim)
    files_before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    capsys.readouterr()
    assert_user_error(run_cli(capsys, *argv), *(named or [victim.name]))
    assert digest(victim) == before
    made = sorted(set(p for p in tmp_path.rglob("*") if p.is_file()) - set(files_before))
    assert not made, f"files written before the refusal: {made}"


def test_a_training_run_never_writes_over_the_model_it_starts_from(capsys, tmp_path, tiny_ckpt):
    """run.out at the folder of the stage-1 run whose final.pt is model.pretrained: --overwrite would delete it
    before loading it, a fresh run would replace it."""
    import shutil

    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    final = Path(shutil.copy(tiny_ckpt, stage1 / "final.pt"))
    before = digest(final)
    (tmp_path / "train.csv").write_text("filepath,title\nx.png,a harbor\n")  # the config is otherwise sound
    recipe = tmp_path / "stage2.yaml"
    recipe.write_text(f"model:\n  arch: Test-Tiny-ViT\n  pretrained: {final}\ndata:\n  kind: csv\n  train: "
                      f"{tmp_path / 'train.csv'}\nrun:\n  out: {stage1}\n  device: cpu\n")
    for extra in (["--overwrite"], []):
        line = assert_user_error(run_cli(capsys, "train", "--config", recipe, *extra), "final.pt")
        assert "run.out" in line
        assert digest(final) == before and os.listdir(stage1) == ["final.pt"]
