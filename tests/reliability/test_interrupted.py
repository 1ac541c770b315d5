"""SIGTERM or Ctrl-C (SIGINT) in the middle of ``farslip segment`` (run as a user runs it, in its own process): the
command stops cleanly (exit status 143, or 130 for Ctrl-C) with one line and no traceback, leaves no
finished-looking map, no temporary file, and an earlier good map untouched."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from farslip.infer.runner import DONE_DIR
from support.hostile import digest, start_cli, terminate_when, write_geotiff


@pytest.fixture
def big_scene(tmp_path):
    arr = np.random.default_rng(0).integers(1, 255, (3, 640, 640), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    return write_geotiff(tmp_path / "in" / "scene.tif", arr)


@pytest.fixture
def config_dir(tmp_path, tiny_arch):
    """The tiny architecture's open_clip config, for the subprocess to register."""
    import open_clip

    d = tmp_path / "model_configs"
    d.mkdir()
    (d / f"{tiny_arch}.json").write_text(json.dumps(open_clip.get_model_config(tiny_arch)))
    return d


def _staging(out):
    return [p for p in out.glob(".*") if "stage" in p.name or "partial" in p.name] if out.exists() else []


def _segment(scene, ckpt, out, config_dir):
    return start_cli("segment", scene, "--checkpoint", ckpt, "--classes", "water", "land", "--out", out,
                     "--block", "32", "--no-progress", "--device", "cpu", config_dir=config_dir)


def _tiles_under_way(out):
    return lambda: bool(_staging(out))


def _leftovers(out):
    """Hidden files other than the completion records (a run's deliberate record of what is complete)."""
    return [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != DONE_DIR] if out.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopped_mid_segment_leaves_no_map(tmp_path, big_scene, tiny_ckpt, config_dir, signum):
    out = tmp_path / "out"
    rc, _, err = terminate_when(_segment(big_scene, tiny_ckpt, out, config_dir), _tiles_under_way(out),
                                signum=signum)
    assert rc == 128 + signum, err
    assert "Traceback" not in err, err
    if signum == signal.SIGINT:
        assert err.strip().splitlines()[-1].startswith("farslip: interrupted"), err
    assert not (out / "scene.tif").exists() and not (out / "scene.json").exists()
    assert _leftovers(out) == []


def test_sigterm_mid_rerun_keeps_the_earlier_map(tmp_path, big_scene, tiny_ckpt, config_dir):
    import farslip

    out = tmp_path / "out"
    farslip.segment(big_scene, ["water", "land"], checkpoint=tiny_ckpt, out=out, progress=False, block=320)
    good = {name: digest(out / name) for name in ("scene.tif", "scene.png", "scene.json")}
    rc, _, err = terminate_when(_segment(big_scene, tiny_ckpt, out, config_dir), _tiles_under_way(out))
    assert rc == 143, err
    assert {name: digest(out / name) for name in good} == good
    assert _leftovers(out) == []
