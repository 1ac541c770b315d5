"""Two gloo processes (torch.multiprocessing, file rendezvous) give the metrics of one process for each protocol:
classification counts summed, retrieval features gathered in the one-process order then ranked once (with tied
scores, so the official tie rule is exercised), OVSS intersections and unions summed; skipped records are counted
once; a bad record on one rank stops every rank."""
from __future__ import annotations

import pickle
import runpy
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from farslip.core.distributed import batch_shard

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"


def _data(root: Path) -> dict:
    """The tiny benchmarks, plus: a retrieval table where two rows' images are the same picture (tied scores)
    and one image is unreadable; an OVSS set of 5 images, one of them corrupt."""
    import numpy as np

    maker = runpy.run_path(str(MAKE))
    maker["make_classification"](root, np.random.default_rng(0))
    maker["make_retrieval"](root, np.random.default_rng(1))
    maker["make_ovss"](root, np.random.default_rng(2), n_images=5)
    ret = root / "retrieval" / "ucmcaptions"
    shutil.copy(ret / "images" / "0000.jpg", ret / "images" / "0007.jpg")  # the same picture twice
    (ret / "images" / "0008.jpg").write_bytes(b"not a jpeg")
    table = ret / "ucmcaptions_img_txt_pairs_test.csv"
    table.write_text(table.read_text() + "ucmcaptions/images/0007.jpg,a copy of the first picture\n"
                                         "ucmcaptions/images/0008.jpg,an unreadable picture\n")
    ov = root / "ovss" / "LoveDA"
    (ov / "img_dir" / "val" / "loveda_03.png").write_bytes(b"\x89PNG broken")
    return {"cls_csv": str(root / "classification" / "aid" / "aid_img_txt_pairs_test.csv"),
            "cls_names": str(root / "classification" / "aid" / "classnames.txt"),
            "cls_root": str(root / "classification"), "ret_csv": str(table), "ret_root": str(root / "retrieval"),
            "ovss": dict(img_dir=str(ov / "img_dir" / "val"), ann_dir=str(ov / "ann_dir" / "val"),
                         class_file=["background", "building,roof", "road", "water", "barren", "forest",
                                     "agricultural"], name="LoveDA", reduce_zero_label=True, prob_threshold=0.3)}


def _evaluate(arch_dir: str, data: dict) -> dict:
    import open_clip

    import farslip
    import farslip.eval as fe
    from farslip.eval.io import EvalDataError

    open_clip.add_model_config(arch_dir)
    torch.manual_seed(0)
    model, _, preprocess, tokenizer = farslip.load_model("Test-Tiny-ViT")
    model.eval()
    common = dict(num_workers=0, show_progress=False, on_error="skip")
    out = {
        "classification": fe.zero_shot_classification(model, tokenizer, preprocess, data["cls_csv"],
                                                      data["cls_names"], data["cls_root"], batch_size=2, **common),
        "retrieval": fe.retrieval(model, tokenizer, preprocess, data["ret_csv"], data["ret_root"], batch_size=2,
                                  prefix="a satellite image. ", **common),
        "ovss": fe.ovss(model, tokenizer, fe.OVSSDataset(**data["ovss"]), scale=64, crop=32, stride=16,
                        batch_size=1, **common),
    }
    try:  # the corrupt image is the fourth: the second rank's; with on_error="raise" every rank must stop
        fe.ovss(model, tokenizer, fe.OVSSDataset(**data["ovss"]), scale=64, crop=32, stride=16, batch_size=1,
                num_workers=0, show_progress=False, on_error="raise")
        out["raised"] = None
    except EvalDataError as exc:
        out["raised"] = str(exc)
    return {k: (dict(v), v.info) if isinstance(v, dict) else v for k, v in out.items()}


def _worker(rank, world, rendezvous, arch_dir, data, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        result = _evaluate(arch_dir, data)
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


def test_batch_shard_deals_whole_batches_in_order():
    # 7 items, batches of 2 -> batches [0,1] [2,3] [4,5] [6]: rank 0 the first two, rank 1 the last two
    assert [batch_shard(7, 2, r, 2) for r in range(2)] == [range(0, 4), range(4, 7)]
    assert [batch_shard(3, 4, r, 2) for r in range(2)] == [range(0, 0), range(0, 3)]  # fewer batches than ranks
    shards = [batch_shard(101, 8, r, 3) for r in range(3)]
    assert [i for s in shards for i in s] == list(range(101))
    assert all(s.start % 8 == 0 for s in shards)


def test_two_processes_equal_one(tmp_path, tiny_arch):
    import open_clip

    arch_dir = str(next(p for p in open_clip.factory._MODEL_CONFIG_PATHS if (p / "Test-Tiny-ViT.json").exists()))
    data = _data(tmp_path / "bench")
    for attempt in range(2):  # gloo can abort at start-up on a loaded machine: one fresh rendezvous more
        try:
            mp.start_processes(_worker, args=(2, str(tmp_path / f"rendezvous{attempt}"), arch_dir, data,
                                              str(tmp_path)), nprocs=2, join=True, start_method="spawn")
            break
        except mp.ProcessExitedException:
            if attempt == 1:
                raise
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    one = _evaluate(arch_dir, data)

    for kind in ("classification", "retrieval", "ovss"):
        metrics, info = one[kind]
        for rank in ranks:
            assert rank[kind][0] == metrics, (kind, rank[kind][0], metrics)
            assert rank[kind][1]["skipped"] == info["skipped"], kind
            assert rank[kind][1]["errors"] == info["errors"], kind
    assert one["retrieval"][1]["skipped"] == 1 and one["ovss"][1]["skipped"] == 1
    assert one["ovss"][1]["images"] == ranks[0]["ovss"][1]["images"] == 4
    assert one["classification"][1]["n"] == ranks[1]["classification"][1]["n"] == 6
    assert one["raised"] and "loveda_03" in one["raised"]
    assert all(r["raised"] for r in ranks)
    assert any("loveda_03" in r["raised"] for r in ranks)


def test_torchrun_eval_command_equals_one_process(tmp_path):
    """`torchrun -m farslip eval classification` on 2 CPU processes: the report of one process, written once."""
    import json
    import os
    import subprocess
    import sys

    import farslip
    from farslip.cli import main

    root = tmp_path / "bench"
    import numpy as np

    runpy.run_path(str(MAKE))["make_classification"](root, np.random.default_rng(0))
    model, *_ = farslip.load_model("FarSLIP-Tiny")
    ckpt = farslip.save_model(model, tmp_path / "tiny.pt")
    cls = root / "classification"
    args = ["eval", "classification", "--checkpoint", str(ckpt), "--csv", str(cls / "aid" / "aid_img_txt_pairs_test.csv"),
            "--classnames", str(cls / "aid" / "classnames.txt"), "--images", str(cls), "--name", "aid",
            "--workers", "0", "--no-progress", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "farslip",
           *args, "--output", str(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert two["meta"]["processes"] == 2 and one["meta"]["processes"] == 1
    assert two["sections"]["classification"]["results"] == one["sections"]["classification"]["results"]
    assert proc.stdout.count("wrote ") == 1  # one report, from the first rank
