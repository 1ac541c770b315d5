"""Every user mistake ends in one line naming the file, record or option, exit status 2 -- never a traceback;
``--debug`` / ``FARSLIP_DEBUG=1`` show the traceback, and a bug keeps its traceback."""
from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from support.hostile import assert_user_error, run_cli


def segment(capsys, *args):
    return run_cli(capsys, "segment", *args, "--no-progress")


def test_missing_image(capsys, tmp_path, tiny_ckpt):
    missing = tmp_path / "nope.tif"
    assert_user_error(segment(capsys, missing, "--checkpoint", tiny_ckpt, "--classes", "a", "b",
                              "--out", tmp_path / "o"), str(missing))


def test_text_file_named_tif(capsys, tmp_path, tiny_ckpt):
    fake = tmp_path / "notes.tif"
    fake.write_text("these are my notes, not a raster\n")
    line = assert_user_error(segment(capsys, fake, "--checkpoint", tiny_ckpt, "--classes", "a", "b",
                                     "--out", tmp_path / "o"), str(fake))
    assert "not a raster" in line
    assert not (tmp_path / "o" / "notes.tif").exists()


def test_missing_checkpoint(capsys, tmp_path, scene):
    assert_user_error(segment(capsys, scene, "--checkpoint", tmp_path / "none.pt", "--classes", "a", "b"),
                      "none.pt")


@pytest.mark.parametrize("bands, says", [("x,y,z", "band numbers"), ("1,2", "three bands"), ("0,1,2", "start at 1"),
                                         ("1,2,3,4", "three bands"), ("4,3,2", "has 3 band")])
def test_bad_band_lists(capsys, tmp_path, scene, tiny_ckpt, bands, says):
    line = assert_user_error(segment(capsys, scene, "--checkpoint", tiny_ckpt, "--classes", "a", "b",
                                     "--bands", bands, "--out", tmp_path / "o"), "bands")
    assert says in line
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


@pytest.mark.parametrize("classes", [[""], [" , "], [","]])
def test_empty_class_list(capsys, tmp_path, scene, tiny_ckpt, classes):
    assert_user_error(segment(capsys, scene, "--checkpoint", tiny_ckpt, "--classes", *classes), "empty class name")


@pytest.mark.parametrize("classes", [["tree", "tree", "road"], ["tree,forest", "road", "Forest"]])
def test_a_class_named_twice_is_refused(capsys, tmp_path, scene, tiny_ckpt, classes):
    line = assert_user_error(segment(capsys, scene, "--checkpoint", tiny_ckpt, "--classes", *classes,
                                     "--out", tmp_path / "o"), "given twice")
    assert "commas" in line


def test_empty_or_binary_class_file(capsys, tmp_path, scene, tiny_ckpt):
    empty = tmp_path / "classes.txt"
    empty.write_text("\n\n")
    assert_user_error(segment(capsys, scene, "--checkpoint", tiny_ckpt, "--classes-file", empty), "no classes")
    binary = tmp_path / "classes.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert_user_error(segment(capsys, scene, "--checkpoint", tiny_ckpt, "--classes-file", binary), str(binary))


def test_synonyms_repeated_inside_one_class_are_merged(tmp_path, scene, tiny_ckpt):
    import farslip

    res = farslip.segment(scene, ["tree,tree,forest", "road"], checkpoint=tiny_ckpt, out=tmp_path / "o",
                          progress=False)[0]
    assert res.classes == ["tree", "road"] and set(res.class_fractions) == {"tree", "road"}


def _truncated(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_checkpoint(capsys, tmp_path, scene, tiny_ckpt, suffix):
    import farslip

    model, *_ = farslip.load_model(checkpoint=tiny_ckpt)
    bad = _truncated(farslip.save_model(model, tmp_path / f"broken{suffix}"))
    line = assert_user_error(run_cli(capsys, "model", "info", bad), str(bad))
    assert "truncated" in line
    assert_user_error(segment(capsys, scene, "--checkpoint", bad, "--classes", "a", "b", "--out", tmp_path / "o"),
                      str(bad))


def test_truncated_torchscript_archive(capsys, tmp_path, tiny_ckpt):
    # a TorchScript archive (zip with code/ and data.pkl) whose tensor records are cut off
    path = tmp_path / "openai.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), str(path))
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        payload = {n: zf.read(n) for n in names}
    broken = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(broken, "w") as zf:
        for n in names:
            if "/data/" not in n:  # keep code/ and data.pkl, drop the storages
                zf.writestr(n, payload[n])
    capsys.readouterr()  # torch's deprecation warnings about jit.save, not the command's output
    assert_user_error(run_cli(capsys, "model", "info", broken), str(broken))


def test_text_file_as_checkpoint(capsys, tmp_path):
    fake = tmp_path / "weights.safetensors"
    fake.write_text("not weights")
    assert_user_error(run_cli(capsys, "model", "info", fake), str(fake), "a text file")


class _Settings:  # what a PyTorch-Lightning checkpoint keeps beside the weights
    pass


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _torch_bytes(obj, **kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


# (what the file holds, what the one line must say): the file is named by what it is, never with PyTorch's advice
# to load it with weights_only=False (which would run the file's code)
NOT_CHECKPOINTS = [
    (lambda: bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "unknown format"),
    (lambda: b"", "empty"),
    (lambda: b"epoch,loss\n1,0.5\n", "a text file (it begins 'epoch,loss')"),
    (lambda: b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
    (lambda: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "Git LFS pointer"),
    (lambda: _cut(_torch_bytes({"w": torch.zeros(4000)})), "truncated: a torch checkpoint (zip archive)"),
    (lambda: _cut(_torch_bytes({"w": torch.zeros(4000)}, _use_new_zipfile_serialization=False)),
     "torch checkpoint (legacy format) that is truncated"),
    (lambda: pickle.dumps({"w": [1.0, 2.0]}), "a plain Python pickle"),
    (lambda: _torch_bytes({"state_dict": {"w": torch.zeros(2)}, "hparams": _Settings()}),
     "holds Python objects besides tensors"),
    (lambda: b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
]


@pytest.mark.parametrize("content, says", NOT_CHECKPOINTS, ids=[s.split()[-1] for _, s in NOT_CHECKPOINTS])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(capsys, tmp_path, content, says):
    fake = tmp_path / "model.pt"
    fake.write_bytes(content())
    line = assert_user_error(run_cli(capsys, "model", "info", fake), str(fake), says)
    assert "weights_only" not in line and "likely succeed" not in line


def test_yaml_syntax_error_names_file_and_line(capsys, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  arch: Test-Tiny-ViT\noptim: [lr: 1\n")
    line = assert_user_error(run_cli(capsys, "train", "--config", recipe), str(recipe))
    assert "YAML" in line and (":3:" in line or ":4:" in line)


def test_yaml_base_with_syntax_error_is_named(capsys, tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n\tlr: 1\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: base.yaml\n")
    assert_user_error(run_cli(capsys, "train", "--config", recipe), "base.yaml")


def test_recipe_that_is_not_a_mapping(capsys, tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- a\n- b\n")
    assert_user_error(run_cli(capsys, "train", "--config", recipe), str(recipe), "mapping")


def test_bad_set_values(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  arch: Test-Tiny-ViT\n")
    assert_user_error(run_cli(capsys, "train", "--config", recipe, "--set", "optim.nope=1"), "nope")
    assert_user_error(run_cli(capsys, "train", "--config", recipe, "--set", "optim.lr=[1"), "--set")
    assert_user_error(run_cli(capsys, "train", "--config", recipe, "--set", "optim"), "--set")


def test_missing_recipe(capsys, tmp_path):
    assert_user_error(run_cli(capsys, "train", "--config", tmp_path / "nope.yaml"), "nope.yaml")


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    from farslip.core.errors import FarslipError

    with pytest.raises(FarslipError):
        run_cli(capsys, "--debug", "model", "info", tmp_path / "none.pt")
    monkeypatch.setenv("FARSLIP_DEBUG", "1")
    with pytest.raises(FarslipError):
        run_cli(capsys, "model", "info", tmp_path / "none.pt")


def test_a_bug_keeps_its_traceback(capsys, tmp_path, monkeypatch):
    import farslip.models.checkpoint_io as cio

    def broken(path):
        raise ZeroDivisionError("a bug, not the user's fault")

    monkeypatch.setattr(cio, "read_checkpoint", broken)
    with pytest.raises(ZeroDivisionError):
        run_cli(capsys, "model", "info", tmp_path / "x.pt")
