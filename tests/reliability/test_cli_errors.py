"""The command line's error paths, walked one by one: each ends with exit status 2 and one line on stderr,
``farslip: error: ...``, naming what to fix -- never a traceback, never an exit without that line.

``farslip eval``'s checks all run before a model is loaded; the other commands are represented by one or two
mistakes each (their own suites go through theirs in depth).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from support.hostile import REPO, assert_user_error, cli_env, run_cli

TINY = ["--model", "FarSLIP-Tiny", "--workers", "0", "--no-progress"]


@pytest.fixture
def files(tmp_path):
    """An empty benchmark root, a class-names file, an empty table and two empty folders; for the SAM 3 cases a
    small raster, a blank class file and a checkpoint that is not SAM 3."""
    import numpy as np
    import torch
    from PIL import Image

    (tmp_path / "bench").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "overlays").mkdir()
    (tmp_path / "names.txt").write_text("a\nb\n")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "table.csv").write_text("filepath,label\n")
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "tile.png")
    torch.save({"visual.conv1.weight": torch.zeros(4, 3, 8, 8)}, tmp_path / "clip.pt")
    return tmp_path


# (argv with {d} for the fixture folder, fragments the one line must hold)
EVAL_CASES = [
    (["eval", "retrieval", *TINY], ["give --data-root"]),
    (["eval", "all", *TINY], ["eval all: give --data-root DIR"]),
    (["eval", "classification", *TINY, "--csv", "{d}/table.csv"], ["also needs --classnames"]),
    (["eval", "classification", *TINY, "--classnames", "{d}/names.txt"], ["also needs --csv"]),
    (["eval", "ovss", *TINY, "--img-dir", "{d}/img"], ["also needs --ann-dir --classes-file"]),
    (["eval", "classification", *TINY, "--csv", "{d}/table.csv", "--classnames", "{d}/names.txt", "--data-root",
      "{d}/bench"], ["not both"]),
    (["eval", "retrieval", *TINY, "--csv", "{d}/table.csv", "--datasets", "rsicd"], ["not both"]),
    (["eval", "ovss", *TINY, "--data-root", "{d}/bench", "--datasets", "mars"], ["unknown ovss benchmark", "mars"]),
    (["eval", "all", *TINY, "--data-root", "{d}/bench", "--datasets", "aid", "mars"],
     ["unknown benchmark(s) mars"]),
    (["eval", "ovss", *TINY, "--data-root", "{d}/bench", "--root", "ovss"], ["--root expects KIND=DIR", "'ovss'"]),
    (["eval", "ovss", *TINY, "--data-root", "{d}/bench", "--root", "mars={d}"], ["--root: unknown kind 'mars'"]),
    (["eval", "ovss", "--data-root", "{d}/bench", "--no-progress"], ["give --checkpoint and/or --model"]),
    (["eval", "ovss", *TINY, "--data-root", "{d}/bench", "--scale", "-1"], ["OVSS protocol", "scale", "-1"]),
    (["eval", "all", *TINY, "--data-root", "{d}/bench", "--crop", "0"], ["OVSS protocol", "crop"]),
    (["eval", "ovss", *TINY, "--data-root", "{d}/bench", "--simfeatup", "{d}/absent.ckpt"], ["absent.ckpt"]),
    (["eval", "classification", *TINY, "--csv", "{d}/none.csv", "--classnames", "{d}/names.txt"],
     ["--csv", "none.csv", "no such file"]),
    (["eval", "retrieval", *TINY, "--csv", "{d}/table.csv", "--images", "{d}/nowhere"], ["--images", "nowhere"]),
    (["eval", "ovss", *TINY, "--img-dir", "{d}/img", "--ann-dir", "{d}/ann", "--classes-file", "{d}/names.txt"],
     ["--ann-dir", "no such folder"]),
    (["eval", "ovss", *TINY, "--img-dir", "{d}/img", "--ann-dir", "{d}/img", "--classes-file", "mars"],
     ["class file not found: mars"]),
    (["eval", "ovss", *TINY, "--img-dir", "{d}/overlays", "--ann-dir", "{d}/img", "--classes-file",
      "{d}/names.txt", "--output", "{d}"], ["overlays", "--img-dir"]),
]

RECIPE = str(REPO / "configs" / "stage1_vitb16_rs5m.yaml")

OTHER_CASES = [
    (["data", "validate", "{d}/none.json"], ["none.json"]),
    (["data", "stats", "{d}/none.json"], ["none.json"]),
    (["data", "validate", "{d}/none-{0000..0001}.tar"], ["none-0000.tar", "0 of 2 shards"]),
    (["data", "stats", "{d}/table.csv", "--png", "{d}/x.png"], ["--png", "MGRS"]),
    (["train", "--config", RECIPE, "--set", "data.views=crop", "--set", "run.out={d}/run"], ["data.views", "'crop'"]),
    (["train", "--config", RECIPE, "--set", "objective.preset=stage3", "--set", "run.out={d}/run"],
     ["objective.preset", "stage3"]),
    (["train", "--config", RECIPE, "--set", "data.train={d}/table.csv", "--set", "data.kind=csv",
      "--set", "run.out={d}/run"], ["data.caption_key", "'title'"]),
    (["data", "build", "--format", "dota", "--images", "{d}/img", "--labels", "{d}/img", "--out", "{d}/o",
      "--captioner", "mllm"], ["--captioner mllm needs --mllm-url and --mllm-model"]),
    (["train", "--config", "{d}/none.yaml"], ["none.yaml"]),
    (["model", "info", "{d}/none.pt"], ["none.pt"]),
    (["model", "convert", "{d}/none.pt", "{d}/out.safetensors"], ["none.pt"]),
    (["segment", "{d}/none.tif", "--checkpoint", "{d}/none.pt", "--classes", "a", "b", "--no-progress"],
     ["none.tif"]),
    (["classify", "{d}/none.png", "--checkpoint", "{d}/none.pt", "--classes", "a", "b"], ["none.png"]),
    (["segment", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "", "water"],
     ["--classes ''", "empty class name"]),
    (["segment", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "water"],
     ["one class ('water')", "farslip locate"]),
    (["classify", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "water"],
     ["one class ('water')", "search query"]),
    (["classify", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "water", " , "],
     ["--classes ' , '", "empty class name"]),
    (["locate", "", "{d}/names.txt", "--checkpoint", "{d}/none.pt"], ["query ''", "empty class name"]),
    (["locate", "road", "{d}/none.tif", "--checkpoint", "{d}/none.pt"], ["none.tif"]),
    (["search", "index", "{d}/nowhere", "--checkpoint", "{d}/none.pt"], ["nowhere"]),
    (["segment", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "a", "b", "--address", "head:6379"],
     ["--address and --actors", "add --engine ray"]),
    (["classify", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "a", "b", "--engine", "ray",
      "--actors", "0"], ["--actors 0", "at least one"]),
    (["search", "index", "{d}/img", "--checkpoint", "{d}/none.pt", "--engine", "ray", "--device", "cuda:1"],
     ["--device cuda:1 with --engine ray"]),
    (["segment", "{d}/names.txt", "--checkpoint", "{d}/none.pt", "--classes", "a", "b", "--engine", "ray",
      "--address", "127.0.0.1:1"], ["--address 127.0.0.1:1: no Ray cluster answers there"]),
    (["search", "query", "road", "--index", "{d}/nowhere", "--checkpoint", "{d}/none.pt"], ["nowhere"]),
    (["view", "{d}/none.tif"], ["none.tif"]),
]

SAM3 = ["--protocol", "segearth-ov3", "--no-progress", "--out", "{d}/maps"]
#: the SAM 3 protocols' mistakes (the checkpoint is SAM 3's weights; a fusion's CLIP is --clip-checkpoint)
SAM3_CASES = [
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", "--classes", "a", "b", *SAM3],
     ["clip.pt", "not a SAM 3 checkpoint"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/names.txt", "--classes", "a", "b", *SAM3],
     ["names.txt", "not a checkpoint: a text file"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/none.pt", "--classes", "a", "b", *SAM3],
     ["none.pt", "no such file"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", "--classes", "a " * 40, "b", *SAM3],
     ["tokens long", "SAM 3's text encoder takes 32"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", "--classes-file", "{d}/blank.txt", *SAM3],
     ["no classes given"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", "--classes", "a", "b", *SAM3, "--attn", "sclip"],
     ["--attn", "CLIP option", "segearth-ov3 runs SAM 3"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", "--classes", "a", "b", *SAM3, "--clip-checkpoint",
      "{d}/clip.pt"], ["--clip-checkpoint", "runs SAM 3 alone"]),
    (["segment", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", "--classes", "a", "b", "--protocol", "sam3-clip-fuse",
      "--no-progress"], ["fuses SAM 3 with a CLIP", "--clip-checkpoint"]),
    (["locate", "road", "{d}/tile.png", "--checkpoint", "{d}/clip.pt", *SAM3], ["clip.pt", "not a SAM 3 checkpoint"]),
    (["locate", "a " * 40, "{d}/tile.png", "--checkpoint", "{d}/clip.pt", *SAM3], ["tokens long"]),
    (["eval", "ovss", "--data-root", "{d}/bench", "--protocol", "segearth-ov3", "--checkpoint", "{d}/clip.pt",
      "--cls-lambda", "-0.3"], ["cls_lambda", "CLIP-only"]),
    (["eval", "ovss", "--data-root", "{d}/bench", "--protocol", "segearth-ov3", "--checkpoint", "{d}/clip.pt",
      "--datasets", "loveda", "--output", "{d}/o"], ["clip.pt", "not a SAM 3 checkpoint"]),
]


def _ids(cases):
    return [f"{' '.join(argv[:2])}-{i}" for i, (argv, _) in enumerate(cases)]


def _argv(argv, d):
    return [a.replace("{d}", str(d)) for a in argv]


def _one_error_line(outcome, fragments, d) -> str:
    line = assert_user_error(outcome, *[f.replace("{d}", str(d)) for f in fragments])
    assert line.startswith("farslip: error: "), line
    assert "Traceback" not in outcome.out, outcome.out
    return line


@pytest.mark.parametrize("argv, fragments", EVAL_CASES, ids=_ids(EVAL_CASES))
def test_eval_errors(capsys, files, argv, fragments):
    _one_error_line(run_cli(capsys, *_argv(argv, files)), fragments, files)


@pytest.mark.parametrize("argv, fragments", OTHER_CASES, ids=_ids(OTHER_CASES))
def test_other_commands_errors(capsys, files, argv, fragments):
    _one_error_line(run_cli(capsys, *_argv(argv, files)), fragments, files)


@pytest.mark.parametrize("argv, fragments", SAM3_CASES, ids=_ids(SAM3_CASES))
def test_sam3_errors_write_nothing(capsys, files, argv, fragments):
    _one_error_line(run_cli(capsys, *_argv(argv, files)), fragments, files)
    assert not (files / "maps").exists() and not (files / "o").exists()


@pytest.mark.parametrize("hub_state, fragment", [("offline", "not in the local Hugging Face cache"),
                                                 ("gated", "is gated")])
def test_sam3_by_name_when_the_hub_cannot_give_it(capsys, files, monkeypatch, hub_state, fragment):
    """``--checkpoint sam3`` (facebook/sam3, gated): offline with an empty cache, or refused access."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError

    import farslip.models.sam3 as sam3

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(files / "empty-cache"))
    if hub_state == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        try:
            import httpx2 as httpx  # huggingface_hub 2.x's HTTP client
        except ImportError:
            import httpx

        def refused(repo, filename, **kwargs):
            url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
            response = httpx.Response(403, request=httpx.Request("GET", url))
            raise GatedRepoError(f"403 Client Error: access to model {repo} is restricted", response=response)

        monkeypatch.setattr("huggingface_hub.hf_hub_download", refused)
    outcome = run_cli(capsys, "segment", files / "tile.png", "--checkpoint", "sam3", "--classes", "a", "b",
                      *_argv(SAM3, files))
    _one_error_line(outcome, [fragment, "sam3"], files)
    assert not (files / "maps").exists() and sam3.SAM3_HUB_REPO in outcome.err


def test_eval_checks_come_before_the_model_is_loaded(capsys, files, monkeypatch):
    """A mistake is found before any weights are read (a ViT-B is a minute on a CPU)."""
    import farslip.eval.evaluation as evaluation

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(evaluation, "_load", no_loading)
    for argv, fragments in EVAL_CASES:
        _one_error_line(run_cli(capsys, *_argv(argv, files)), fragments, files)


def test_nothing_evaluated_is_one_error_line_after_the_report(capsys, files):
    """A data root without any benchmark: the report says what was expected where, then one error line."""
    outcome = run_cli(capsys, "eval", "retrieval", *TINY, "--data-root", files / "bench", "--output", files / "o")
    _one_error_line(outcome, ["nothing was evaluated"], files)
    assert "missing RSICD: expected" in outcome.out and (files / "o" / "results.json").is_file()


def test_no_system_exit_with_a_message_in_the_package():
    """User errors are FarslipErrors (one line, exit 2), not ``SystemExit("...")`` (exit 1, no form)."""
    import ast
    from pathlib import Path

    import farslip

    found = []
    for path in Path(farslip.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SystemExit" and node.args
                    and not isinstance(getattr(node.args[0], "value", None), int)
                    and not isinstance(node.args[0], ast.BinOp)):  # SystemExit(128 + signum) is a status
                found.append(f"{path.name}:{node.lineno}")
    assert not found, found


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "ovss", "--model", "FarSLIP-Tiny", "--data-root", "{d}/bench", "--datasets", "mars"], "mars"),
    (["data", "validate", "{d}/none.json"], "none.json"),
])
def test_the_real_command_exits_2_with_one_line(files, argv, fragment):
    proc = subprocess.run([sys.executable, "-m", "farslip", *_argv(argv, files)], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("farslip: error: ") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_hub_tokenizer_out_of_reach_is_one_line(capsys, files, monkeypatch):
    """SigLIP 2's tokenizer comes from the Hugging Face Hub: offline and not cached, one line that says so -- before
    the weights are fetched or the model built."""
    import numpy as np
    from huggingface_hub import constants
    from PIL import Image

    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(files / "empty-cache"))):
        monkeypatch.setattr(constants, name, value)
        monkeypatch.setenv(name, "1" if value is True else value)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(files / "scene.png")
    outcome = run_cli(capsys, "classify", files / "scene.png", "--checkpoint", "webli", "--model",
                      "ViT-B-16-SigLIP2", "--classes", "a", "b")
    _one_error_line(outcome, ["timm/ViT-B-16-SigLIP2", "Hugging Face cache"], files)
