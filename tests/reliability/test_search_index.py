"""The search index never answers with a file that is gone or with the old content of a replaced one: files are
known by size, mtime, inode and SHA-256; a query updates the index first when something changed."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from support.hostile import assert_user_error, run_cli


def _img(path, colour, seed=0):
    arr = np.zeros((32, 32, 3), np.uint8) + np.array(colour, np.uint8)
    arr += np.random.default_rng(seed).integers(0, 8, arr.shape, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "tiles"
    d.mkdir()
    _img(d / "red.png", (220, 20, 20))
    _img(d / "green.png", (20, 200, 20))
    _img(d / "blue.png", (20, 20, 220))
    return d


def _meta(folder):
    return json.loads((folder / ".farslip-index" / "index.json").read_text())


def test_a_deleted_file_is_never_returned(folder, tiny_ckpt, capsys):
    from farslip import search

    search.index(folder, checkpoint=tiny_ckpt, progress=False)
    (folder / "green.png").unlink()
    hits = search.query("green", index=folder, checkpoint=tiny_ckpt, top=10)
    assert sorted(os.path.basename(h.path) for h in hits) == ["blue.png", "red.png"]
    assert "changed or deleted" in capsys.readouterr().err
    assert {e["path"] for e in _meta(folder)["entries"]} == {"blue.png", "red.png"}


def test_a_replaced_file_is_embedded_again(folder, tiny_ckpt):
    from farslip import search

    search.index(folder, checkpoint=tiny_ckpt, progress=False)
    old = {e["path"]: e["sha256"] for e in _meta(folder)["entries"]}
    shutil.copy2(folder / "blue.png", folder / "red.png")  # same size and mtime as blue, new content for red
    hits = search.query(folder / "blue.png", index=folder, checkpoint=tiny_ckpt, top=3)
    new = {e["path"]: e["sha256"] for e in _meta(folder)["entries"]}
    assert new["red.png"] != old["red.png"] and new["red.png"] == new["blue.png"]
    top2 = {os.path.basename(h.path) for h in hits[:2]}
    assert top2 == {"blue.png", "red.png"} and hits[0].score == pytest.approx(hits[1].score, abs=1e-4)


def test_same_size_same_mtime_new_content_is_noticed_by_index(folder, tiny_ckpt):
    from farslip import search

    search.index(folder, checkpoint=tiny_ckpt, progress=False)
    st = (folder / "red.png").stat()
    _img(folder / "red.png", (220, 20, 20), seed=1)  # other pixels, (very likely) the same size
    os.utime(folder / "red.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    summary = search.index(folder, checkpoint=tiny_ckpt, progress=False)
    assert summary["embedded"] == 1 and summary["reused"] == 2


def test_unchanged_folder_is_reused_without_work(folder, tiny_ckpt):
    from farslip import search

    search.index(folder, checkpoint=tiny_ckpt, progress=False)
    summary = search.index(folder, checkpoint=tiny_ckpt, progress=False)
    assert summary["embedded"] == 0 and summary["reused"] == 3


def test_query_with_another_checkpoint_is_refused(capsys, folder, tiny_ckpt, tmp_path):
    from farslip import search

    search.index(folder, checkpoint=tiny_ckpt, progress=False)
    other = tmp_path / "other.pt"
    shutil.copy(tiny_ckpt, other)
    assert_user_error(run_cli(capsys, "search", "query", "red", "--index", folder, "--checkpoint", other),
                      "other.pt", "indexed with")


def test_damaged_index_is_one_line_for_query_and_rebuilt_by_index(capsys, folder, tiny_ckpt):
    from farslip import search

    search.index(folder, checkpoint=tiny_ckpt, progress=False)
    (folder / ".farslip-index" / "index.json").write_text('{"model": ')
    assert_user_error(run_cli(capsys, "search", "query", "red", "--index", folder, "--checkpoint", tiny_ckpt),
                      "index.json")
    assert search.index(folder, checkpoint=tiny_ckpt, progress=False)["embedded"] == 3


def test_query_of_a_folder_never_indexed(capsys, folder, tiny_ckpt):
    assert_user_error(run_cli(capsys, "search", "query", "red", "--index", folder, "--checkpoint", tiny_ckpt),
                      "search index")


def test_index_names_each_failure_and_leaves_farslip_outputs_out(capsys, folder, tiny_ckpt, tmp_path):
    """A folder that also holds segment's outputs (a sub-folder of them, and a map and a preview copied beside
    the tiles) and a broken file: the outputs are neither indexed nor walked into, the broken file is named."""
    import farslip

    (folder / "broken.png").write_text("not a PNG")
    scene = _img(tmp_path / "scene.png", (120, 120, 120))
    farslip.segment(scene, ["water", "land"], checkpoint=tiny_ckpt, out=folder / "maps", progress=False)
    shutil.copy(folder / "maps" / "scene.tif", folder / "map-copy.tif")
    shutil.copy(folder / "maps" / "scene.png", folder / "preview-copy.png")
    capsys.readouterr()
    res = run_cli(capsys, "search", "index", folder, "--checkpoint", tiny_ckpt, "--no-progress")
    summary = json.loads(res.out)
    assert res.code == 1, res.err  # an input failed: named, and the command says so
    assert summary["failed"] == 1 and summary["failures"][0].startswith("broken.png: ")
    assert summary["images"] == 3 and summary["skipped_farslip_outputs"] == 3  # the maps/ folder, two copies
    assert {e["path"] for e in _meta(folder)["entries"]} == {"red.png", "green.png", "blue.png"}
