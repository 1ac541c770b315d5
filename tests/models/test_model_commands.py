"""``farslip model list | info | download | export`` and ``--checkpoint NAME`` in the other commands, as a user runs
them: against a fake Hugging Face Hub on 127.0.0.1, with a registry entry given as a YAML file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import farslip
from farslip.cli import main
from farslip.models import registry

TEXTS = ["a satellite image of a harbour", "farmland"]


def _registry_yaml(tmp_path, commit, name="tiny-cli"):
    path = tmp_path / "lab-models.yaml"
    path.write_text(f"""models:
  {name}:
    title: tiny CLIP of the tests
    arch: Test-Tiny-ViT
    quick_gelu: true
    license: MIT
    hub: {{repo: farslip-test/tiny, file: weights/tiny.pt, revision: {commit}}}
""")
    return path


def test_list_prints_a_pasteable_table(capsys):
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert len(rows) == len(registry.all_entries()) + 2  # header, rule, one row per model
    assert any(r.startswith("| farslip2-vit-b-16 ") for r in rows)


def test_info_explains_a_name_and_still_reads_files(capsys, tiny_on_hub, tmp_path):
    assert main(["model", "info", "farslip2-vit-b-16"]) == 0
    out = capsys.readouterr().out
    assert "FarSLIP2_ViT-B-16.pt" in out and "35.41" in out and "cached        no" in out
    assert main(["model", "download", "tiny-hub"]) == 0
    path = capsys.readouterr().out.split(": ", 1)[1].strip()
    assert main(["model", "info", "tiny-hub"]) == 0
    assert f"cached        {path}" in capsys.readouterr().out
    assert main(["model", "info", path]) == 0  # a file: the checkpoint's own facts
    assert "fits            Test-Tiny-ViT" in capsys.readouterr().out


def test_unknown_name_is_one_line(capsys):
    assert main(["model", "info", "farslip3-vit-b-16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "farslip3-vit-b-16" in err and "farslip2-vit-b-16" in err


def test_export_then_push_then_stock_open_clip(capsys, tiny_on_hub, fake_hub, tmp_path):
    original = tiny_on_hub[0].eval()  # eval mode on both sides: the same attention kernels
    out = tmp_path / "exported"
    assert main(["model", "export", "tiny-hub", str(out), "--format", "open_clip-hub",
                 "--push", "farslip-test/tiny-exported"]) == 0
    printed = capsys.readouterr().out
    assert "pushed to farslip-test/tiny-exported" in printed and 'hf-hub:farslip-test/tiny-exported' in printed
    stock, _, _ = open_clip.create_model_and_transforms("hf-hub:farslip-test/tiny-exported")
    tokenizer = open_clip.get_tokenizer("hf-hub:farslip-test/tiny-exported")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stock.eval().encode_image(images), original.encode_image(images))
        assert torch.equal(stock.encode_text(tokenizer(TEXTS)), original.encode_text(tokenizer(TEXTS)))


def test_export_onnx_from_the_command_line(capsys, tiny_on_hub, tmp_path):
    assert main(["model", "export", "tiny-hub", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    assert "onnxruntime vs PyTorch max |diff|" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "image.onnx", "image_dense.onnx", "onnx_export.json", "text.onnx"]


def test_export_into_a_used_folder_is_one_line(capsys, tiny_on_hub, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert main(["model", "export", "tiny-hub", str(tmp_path / "used"), "--format", "open_clip-hub"]) == 2
    assert "not empty" in capsys.readouterr().err


def _scene(tmp_path):
    scene = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(scene)
    return scene


def test_segment_with_a_name_then_offline(tiny_on_hub, fake_hub, tmp_path, monkeypatch):
    """``--checkpoint NAME`` in another command (in this process; the slow test below does it in fresh ones)."""
    from huggingface_hub import constants

    scene = _scene(tmp_path)
    args = ["segment", str(scene), "--checkpoint", "tiny-hub", "--classes", "road", "water,river", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "online")]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    served = len(fake_hub.requests)
    assert main([*args, "--out", str(tmp_path / "offline")]) == 0
    assert len(fake_hub.requests) == served
    assert (tmp_path / "online" / "scene.tif").read_bytes() == (tmp_path / "offline" / "scene.tif").read_bytes()


@pytest.mark.slow
def test_new_user_segments_with_a_name_then_offline(fake_hub, tiny_state, tmp_path):
    """The path a new user takes, in fresh processes (so HF_ENDPOINT / HF_HUB_OFFLINE act as environment
    variables): list the models, segment a scene with a registry name, again offline from the cache."""
    _, data, _ = tiny_state
    commit = fake_hub.add_file("farslip-test/tiny", "weights/tiny.pt", data)
    env = {**os.environ, registry.ENV_REGISTRY: str(_registry_yaml(tmp_path, commit))}
    scene = _scene(tmp_path)

    def farslip_cli(*args, offline=False):
        run_env = {**env, "HF_HUB_OFFLINE": "1"} if offline else env
        return subprocess.run([sys.executable, "-c", _CLI_WITH_TINY_ARCH, *args], env=run_env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    listed = farslip_cli("model", "list")
    assert listed.returncode == 0, listed.stderr
    assert "| tiny-cli " in listed.stdout
    seg = farslip_cli("segment", str(scene), "--checkpoint", "tiny-cli", "--classes-file", "openearthmap",
                      "--out", "maps", "--no-progress")
    assert seg.returncode == 0, seg.stderr
    summary = json.loads((tmp_path / "maps" / "scene.json").read_text())
    assert "building" in json.dumps(summary)  # OpenEarthMap's classes, from the packaged file
    served = len(fake_hub.requests)
    (tmp_path / "maps").rename(tmp_path / "maps-online")
    again = farslip_cli("segment", str(scene), "--checkpoint", "tiny-cli", "--classes-file", "openearthmap",
                        "--out", "maps", "--no-progress", offline=True)
    assert again.returncode == 0, again.stderr
    assert len(fake_hub.requests) == served  # offline: not one request
    assert (tmp_path / "maps" / "scene.tif").read_bytes() == (tmp_path / "maps-online" / "scene.tif").read_bytes()


# The tests' tiny architecture is registered with open_clip in the child process the way a user registers their
# own configs (open_clip.add_model_config), then the real command line runs.
_CLI_WITH_TINY_ARCH = """
import json, sys, tempfile, open_clip
sys.path.insert(0, %r)
from conftest import TINY_CFG
d = tempfile.mkdtemp()
open(d + "/Test-Tiny-ViT.json", "w").write(json.dumps(TINY_CFG))
open_clip.add_model_config(d)
from farslip.cli import main
sys.exit(main(sys.argv[1:]))
""" % os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_eval_records_the_published_numbers_of_a_named_model():
    from farslip.eval import published_numbers

    published = published_numbers("farslip2-vit-b-16")
    assert published["numbers"] == {"farslip-ovss": 35.41, "farslip-zsc": 62.24}
    assert published["per_set"]["farslip-ovss"]["iSAID"] == 18.67
    assert published_numbers("runs/stage2/final.pt") is None and published_numbers(None) is None
