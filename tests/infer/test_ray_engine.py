"""``--engine ray`` on a local Ray (127.0.0.1, 2 CPUs, one Ray for the module: it takes seconds to start): the
outputs equal a single-process run's, a worker killed mid-run is replaced and its input done again, a rerun skips
the complete inputs, a bad raster is reported and the others complete; classify and search index give what one
process gives. Without Ray, ``--engine ray`` is one line saying how to install it."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray  # `make test` installs the ray extra
import torch
from safetensors.torch import load_file

import farslip
from farslip.cli import main
from farslip.core.problems import read_problems
from farslip.infer.ray_engine import KILL_HOOK, TRIES, InputActor, Tries, clear_partials, plan_pool
from farslip.infer.runner import mark_complete
from farslip.infer.search import EmbedJob
from farslip.infer.segmentation import SegmentJob, SegmentOptions
from support.hostile import assert_user_error, run_cli, write_geotiff

CLASSES = ["water,river", "forest", "road"]


#: The tests' Ray kills workers only where a test says so: not for the machine's memory (shared with other
#: processes, it can pass Ray's 95% line) and not for a slow start on a busy machine.
QUIET_RAY = {"RAY_memory_monitor_refresh_ms": "0", "RAY_worker_register_timeout_seconds": "600"}


@pytest.fixture(scope="module")
def local_ray():
    saved = {k: os.environ.get(k) for k in QUIET_RAY}
    os.environ.update(QUIET_RAY)  # read by the raylet ray.init starts
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_arch):
    torch.manual_seed(0)
    model, *_ = farslip.load_model(tiny_arch)
    return farslip.save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _geotiff(path: Path, seed: int, size=(3, 40, 56)) -> Path:
    return write_geotiff(path, np.random.default_rng(seed).integers(1, 255, size, dtype=np.uint8))


def _scenes(folder: Path, n: int = 4) -> Path:
    folder.mkdir()
    for i in range(n):
        _geotiff(folder / f"s{i}.tif", i, (3, 40 + 8 * i, 56))
    (folder / "s9.tif").write_bytes(b"II*\x00 not really a tiff")  # one bad raster among good ones
    return folder


def test_ray_segment_equals_one_process_survives_a_killed_worker_and_resumes(tmp_path, ckpt, local_ray, monkeypatch,
                                                                             capsys):
    scenes = _scenes(tmp_path / "scenes")
    kw = dict(checkpoint=ckpt, block=32, progress=False, device="cpu", log=None)
    with one_thread():  # as each actor computes (1 CPU each): float sums in the same order, the same bytes
        one = farslip.segment(str(scenes / "*.tif"), CLASSES, out=tmp_path / "one", **kw)
    monkeypatch.setenv(KILL_HOOK, str(tmp_path / "killed"))
    two = farslip.segment(str(scenes / "*.tif"), CLASSES, out=tmp_path / "two", engine="ray", **kw)

    assert (tmp_path / "killed").exists()  # the hook killed an actor's process on its second input
    assert two.line().startswith("segment: 5 input(s) on 2 Ray actor(s): 4 done, 0 already complete, 1 failed")
    again = [o for o in two.outcomes if o.tries > 1]
    assert [(o.status, o.tries) for o in again] == [("done", 2)], two.summary()["outcomes"]
    assert len({o.worker for o in two.outcomes if o.status == "done"}) >= 2  # the dead actor's replacement too
    assert [Path(r.geotiff).name for r in two] == [Path(r.geotiff).name for r in one]
    for i in range(4):  # byte for byte, but the summary's timing
        for kind in ("tif", "confidence.tif", "png"):
            a, b = (tmp_path / run / f"s{i}.{kind}" for run in ("one", "two"))
            assert a.read_bytes() == b.read_bytes(), b
        a, b = (json.loads((tmp_path / run / f"s{i}.json").read_text().replace(f"/{run}/", "/OUT/"))
                for run in ("one", "two"))
        assert {**a, "seconds": 0} == {**b, "seconds": 0}
    for run in ("one", "two"):
        problems = read_problems(tmp_path / run / "problems.jsonl")
        assert [(p.kind, p.path) for p in problems] == [("failed-input", str(scenes / "s9.tif"))]
    assert not list((tmp_path / "two").rglob("*.partial"))
    record = json.loads((tmp_path / "two" / ".farslip-done" / "segment-run.json").read_text())
    assert (record["engine"], record["processes"], record["done"]) == ("ray", 2, 4)

    # the whole command again: the complete inputs are skipped, a changed one is redone, the bad one fails again
    monkeypatch.delenv(KILL_HOOK)
    os.utime(scenes / "s1.tif", ns=(1, 1))
    capsys.readouterr()
    code = main(["segment", str(scenes / "*.tif"), "--checkpoint", str(ckpt), "--classes", *CLASSES, "--block", "32",
                 "--out", str(tmp_path / "two"), "--no-progress", "--device", "cpu", "--engine", "ray"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "segment: 5 input(s) on 2 Ray actor(s): 1 done, 3 already complete, 1 failed" in out
    assert f"failed: {scenes / 's9.tif'}: " in out
    assert (tmp_path / "two" / "s1.tif").read_bytes() == (tmp_path / "one" / "s1.tif").read_bytes()


def test_ray_classify_and_search_index_equal_one_process(tmp_path, ckpt, local_ray):
    folder = _scenes(tmp_path / "tiles", 5)
    kw = dict(checkpoint=ckpt, device="cpu", progress=False, log=None, batch_size=2, top_k=2)  # 3 batches
    with one_thread():
        one = farslip.classify(str(folder / "*.tif"), CLASSES, out=tmp_path / "one.csv", **kw)
    two = farslip.classify(str(folder / "*.tif"), CLASSES, out=tmp_path / "two.csv", engine="ray", **kw)
    assert (tmp_path / "two.csv").read_text() == (tmp_path / "one.csv").read_text()
    assert (two.engine, two.processes, two.failures) == ("ray", 2, one.failures)
    assert list(two.failures) == [str(folder / "s9.tif")]

    (folder / "s9.tif").unlink()
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        for i in range(5):
            _geotiff(tmp_path / name / f"t{i}.tif", i, (3, 32, 48))
    args = ["--checkpoint", str(ckpt), "--no-progress", "--device", "cpu", "--batch-size", "2"]
    with one_thread():
        assert main(["search", "index", str(tmp_path / "one"), *args]) == 0
    assert main(["search", "index", str(tmp_path / "two"), *args, "--engine", "ray"]) == 0
    index = [tmp_path / n / ".farslip-index" for n in ("one", "two")]
    metas = [json.loads((d / "index.json").read_text()) for d in index]
    assert [e["path"] for e in metas[0]["entries"]] == [e["path"] for e in metas[1]["entries"]]
    embs = [load_file(str(d / "embeddings.safetensors"))["embeddings"] for d in index]
    assert embs[0].shape == (5, 32) and torch.equal(embs[0], embs[1])
    assert not (index[1] / ".shards").exists()  # merged, then removed


def test_without_ray_the_engine_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    _geotiff(tmp_path / "a.tif", 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    outcome = run_cli(capsys, "segment", tmp_path / "a.tif", "--checkpoint", tmp_path / "none.pt", "--classes", "a",
                      "b", "--out", tmp_path / "o", "--engine", "ray")
    assert assert_user_error(outcome) == "farslip: error: --engine ray needs Ray: pip install 'farslip[ray]'"


def test_a_model_in_memory_is_refused_by_ray(tmp_path, tiny_model):
    model, _, tokenizer = tiny_model
    with pytest.raises(farslip.core.errors.UsageError, match="loads the model from its checkpoint"):
        farslip.segment(_geotiff(tmp_path / "a.tif", 0), ["a", "b"], model=model, tokenizer=tokenizer,
                        out=tmp_path / "o", engine="ray")


def test_actor_pool_plan():
    assert plan_pool({"CPU": 2.0}, "auto", None, 10) == plan_pool({"CPU": 2.0}, "cpu", 2, 10)
    assert vars(plan_pool({"CPU": 2.0}, "auto", None, 10)) == dict(actors=2, cpus=1.0, gpus=0.0, device="cpu")
    assert vars(plan_pool({"CPU": 16.0}, "auto", None, 3)) == dict(actors=3, cpus=5.0, gpus=0.0, device="cpu")
    assert vars(plan_pool({"CPU": 2.0}, "cpu", 4, 10)) == dict(actors=4, cpus=0.5, gpus=0.0, device="cpu")
    assert vars(plan_pool({"CPU": 64.0, "GPU": 8.0}, "auto", None, 100)) == dict(actors=8, cpus=1.0, gpus=1.0,
                                                                                device="cuda")
    assert vars(plan_pool({"CPU": 64.0, "GPU": 8.0}, "cuda", 16, 100))["gpus"] == 0.5  # two actors a GPU
    assert plan_pool({"CPU": 64.0, "GPU": 8.0}, "cpu", None, 100).device == "cpu"
    with pytest.raises(farslip.core.errors.UsageError, match="has no GPU"):
        plan_pool({"CPU": 2.0}, "cuda", None, 10)


def test_tries_and_partials_of_a_dead_try(tmp_path):
    tries = Tries()
    assert [tries.start(7) for _ in range(TRIES + 1)] == [1, 2, 3, 4] and tries.start(8) == 1
    job = SegmentJob([["a"], ["b"]], SegmentOptions(vector="gpkg").resolved(), tmp_path)
    left = [tmp_path / ".x.tif.123.partial", tmp_path / ".x.gpkg.9.partial",
            tmp_path / ".farslip-done" / ".x.segment.json.5.partial"]
    kept = [tmp_path / ".x.y.tif.4.partial", tmp_path / "x.tif"]  # another input's (stem x.y), a finished file
    for f in left + kept:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"")
    assert sorted(clear_partials(job, "x")) == sorted(left)
    assert all(f.exists() for f in kept) and not any(f.exists() for f in left)


def test_a_try_after_a_death_neither_writes_twice_nor_retries_for_ever(tmp_path):
    """What an actor does on the second try of an input (the first try's worker died) and after the last try."""
    job = SegmentJob([["a"], ["b"]], SegmentOptions().resolved(), tmp_path / "out")
    scene = _geotiff(tmp_path / "x.tif", 0)
    actor = object.__new__(InputActor)  # the actor's logic without a Ray worker around it
    actor.job, actor.key, actor.name, actor.calls, actor.kill_marker = job, "settings", "node/pid 1", 0, None
    actor.worker = None

    def must_not_run(*args):
        raise AssertionError("an input complete before this try was written again")

    job.one = must_not_run
    mark_complete(job.out, scene, "settings", [], "x", command="segment")  # the first try finished it, then died before answering
    actor.start = lambda piece: 2
    _, outcome, _ = actor.one(0, scene, "x")
    assert (outcome.status, outcome.tries) == ("done", 2)
    actor.start = lambda piece: TRIES + 1  # its worker died on every try
    _, outcome, _ = actor.one(0, scene, "x")
    assert outcome.status == "failed" and f"died on each of {TRIES} tries" in outcome.error


def test_an_index_batch_with_its_shard_written_is_not_embedded_again(tmp_path):
    """A batch tried again after its worker died, or a stopped index run started again, finds the batch's shard."""
    job = EmbedJob(tmp_path, tmp_path / ".farslip-index" / ".shards", "model.pt:1")
    items = [{"path": "a.tif", "size": 1, "mtime": 1, "inode": 1, "sha256": "ab", "window": None}]
    shard = job.shard(items)
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"written by the try before")
    assert job.batch(None, items) == str(shard)  # no model (None) was needed
    assert job.shard(items) != EmbedJob(job.root, job.shards, "other.pt:1").shard(items)
    assert job.shard(items) != job.shard([{**items[0], "sha256": "cd"}])
