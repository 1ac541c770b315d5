"""Inference over many inputs: paths, globs, @lists and STAC ItemCollections expand to files; files are dealt to
ranks; 2 gloo processes (torchrun) write what one process writes; a rerun skips complete outputs; one bad raster
is counted and the others are done."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from farslip.core.problems import read_problems
import rasterio

import farslip
from farslip.cli import main
from farslip.infer.runner import deal, is_complete, settings_key
from farslip.infer.inputs import InputError, expand_inputs, names_input
from support.hostile import write_geotiff


def _geotiff(path: Path, seed: int, size=(3, 40, 56)) -> Path:
    return write_geotiff(path, np.random.default_rng(seed).integers(1, 255, size, dtype=np.uint8))


def _stac(path: Path, hrefs: dict[str, str]) -> Path:
    items = [{"type": "Feature", "stac_version": "1.0.0", "id": k, "geometry": None, "properties": {},
              "assets": {"visual": {"href": h, "type": "image/tiff; application=geotiff"},
                         "thumbnail": {"href": "thumb.png"}}} for k, h in hrefs.items()]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


def test_inputs_expand_paths_globs_lists_and_stac(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    a, b, c = (_geotiff(scenes / f"{n}.tif", i) for i, n in enumerate("abc"))
    (tmp_path / "list.txt").write_text("# my scenes\nscenes/c.tif\n\nscenes/a.tif\n")
    assert expand_inputs([str(scenes / "*.tif")]) == [a, b, c]
    assert expand_inputs([f"@{tmp_path / 'list.txt'}", str(b), str(c)]) == [c, a, b]  # each once, in order
    assert expand_inputs([], inputs_from=tmp_path / "list.txt") == [c, a]
    stac = _stac(tmp_path / "items.json", {"item-b": "scenes/b.tif", "item-a": str(a)})
    assert expand_inputs([str(stac)]) == [b, a]
    assert expand_inputs([str(stac)], stac_asset="visual") == [b, a]
    assert names_input(str(scenes / "*.tif")) and names_input("@x.txt") and not names_input("storage tank")
    for entries, kw, message in [
        ([str(scenes / "*.png")], {}, "matches no file"),
        ([str(tmp_path / "nope.tif")], {}, "no such file"),
        ([str(stac)], {"stac_asset": "B04"}, "it has thumbnail, visual; choose one with --stac-asset"),
        ([str(_stac(tmp_path / "remote.json", {"r": "https://example.com/x.tif"}))], {}, "is remote"),
        ([str(_stac(tmp_path / "gone.json", {"g": "missing.tif"}))], {}, "file not found"),
    ]:
        with pytest.raises(InputError, match=message):
            expand_inputs(entries, **kw)
    (tmp_path / "bad.txt").write_text("scenes/a.tif\nscenes/zzz.tif\n")
    with pytest.raises(InputError, match=r"bad.txt: line 2: .*zzz.tif: no such file"):
        expand_inputs([f"@{tmp_path / 'bad.txt'}"])


def test_deal_balances_bytes_and_covers_every_file(tmp_path):
    paths = []
    for i, n in enumerate([9000, 100, 100, 4000, 4000, 100]):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(b"x" * n)
    shares = [[paths[i] for i in deal(paths, r, 2)] for r in range(2)]
    assert sorted(p for s in shares for p in s) == sorted(paths)
    assert shares == [[paths[0]], paths[1:]]  # 9000 bytes against 8300, each share in input order


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                 "farslip", *args])


def test_torchrun_segment_and_classify_equal_one_process_and_resume(tmp_path, tiny_model):
    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(4):
        _geotiff(scenes / f"s{i}.tif", i, (3, 40 + 8 * i, 56))
    (scenes / "s9.tif").write_bytes(b"II*\x00 not really a tiff")  # one bad raster among good ones
    (tmp_path / "list.txt").write_text("scenes/s3.tif\n")
    stac = _stac(tmp_path / "items.json", {"two": "scenes/s2.tif"})
    inputs = [str(scenes / "s[019].tif"), f"@{tmp_path / 'list.txt'}", str(stac)]
    seg = ["segment", *inputs, "--checkpoint", str(ckpt), "--classes", "water,river", "forest", "road",
           "--block", "32", "--no-progress", "--device", "cpu"]

    one = main([*seg, "--out", str(tmp_path / "one")])
    proc = _torchrun(*seg, "--out", str(tmp_path / "two"))
    assert one == 1 and proc.returncode == 1, proc.stderr[-3000:]  # exit 1: one input failed
    assert "segment: 5 input(s) on 2 process(es): 4 done, 0 already complete, 1 failed" in proc.stdout
    assert proc.stdout.count("input(s) on") == 1  # one summary for the run
    for i in range(4):
        with rasterio.open(tmp_path / "one" / f"s{i}.tif") as a, rasterio.open(tmp_path / "two" / f"s{i}.tif") as b:
            assert np.array_equal(a.read(1), b.read(1))
            assert (a.crs, a.transform) == (b.crs, b.transform)
    record = json.loads((tmp_path / "two" / ".farslip-done" / "segment-run.json").read_text())
    assert record["processes"] == 2 and {o["rank"] for o in record["outcomes"] if o["status"] == "done"} == {0, 1}
    assert list(record["failures"]) == [str(scenes / "s9.tif")]
    for run in ("one", "two"):  # the failed input is reported in the one bad-input format
        problems = read_problems(tmp_path / run / "problems.jsonl")
        assert [(p.kind, p.path) for p in problems] == [("failed-input", str(scenes / "s9.tif"))]
    assert not list((tmp_path / "two").glob(".*.partial"))

    # a rerun on 2 processes skips the four complete inputs; a changed input is redone; other settings redo all
    proc = _torchrun(*seg, "--out", str(tmp_path / "two"))
    assert "4 already complete, 1 failed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    os.utime(scenes / "s1.tif", ns=(1, 1))
    proc = _torchrun(*seg, "--out", str(tmp_path / "two"))
    assert "1 done, 3 already complete, 1 failed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert main([*seg, "--out", str(tmp_path / "two"), "--threshold", "0.2"]) == 1
    key = json.loads((tmp_path / "two" / ".farslip-done" / "s0.segment.json").read_text())["settings"]
    assert is_complete(tmp_path / "two", scenes / "s0.tif", key, command="segment") and key != settings_key({})
    record = json.loads((tmp_path / "two" / ".farslip-done" / "segment-run.json").read_text())
    assert (record["done"], record["complete"]) == (4, 0)

    cls = ["classify", str(scenes / "s[0-3].tif"), "--checkpoint", str(ckpt), "--classes", "water", "forest",
           "road", "--top-k", "2", "--no-progress", "--device", "cpu"]
    assert main([*cls, "--out", str(tmp_path / "one.csv")]) == 0
    proc = _torchrun(*cls, "--out", str(tmp_path / "two.csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()
    assert proc.stdout.count("| s0.tif |") == 1


def test_single_bad_input_is_still_the_commands_error(tmp_path, tiny_model):
    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    assert main(["segment", str(tmp_path / "bad.tif"), "--checkpoint", str(ckpt), "--classes", "a", "b",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert main(["segment", str(tmp_path / "*.png"), "--checkpoint", str(ckpt), "--classes", "a", "b",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2


def test_torchrun_search_index_equals_one_process(tmp_path, tiny_model):
    from safetensors.torch import load_file

    model, _, _ = tiny_model
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(5):
            _geotiff(folder / f"t{i}.tif", i, (3, 32, 48))
    args = ["--checkpoint", str(ckpt), "--no-progress", "--device", "cpu", "--batch-size", "2"]  # 3 batches
    assert main(["search", "index", str(tmp_path / "one"), *args]) == 0
    proc = _torchrun("search", "index", str(tmp_path / "two"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"images": 5') == 1
    metas = [json.loads((tmp_path / n / ".farslip-index" / "index.json").read_text()) for n in ("one", "two")]
    assert [e["path"] for e in metas[0]["entries"]] == [e["path"] for e in metas[1]["entries"]]
    embs = [load_file(str(tmp_path / n / ".farslip-index" / "embeddings.safetensors"))["embeddings"]
            for n in ("one", "two")]
    assert embs[0].shape == (5, 32) and np.allclose(embs[0].numpy(), embs[1].numpy(), atol=1e-6)
