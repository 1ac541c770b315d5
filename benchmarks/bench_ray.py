"""``farslip segment --engine ray`` over many generated rasters: inputs/s with 1 and 2 local model actors, and the
same command on one process (``--engine local``) for reference.

Each variant is ``python -m farslip segment scenes/*.tif ... --out OUT_k`` as a child process on a fresh output
folder, so Ray's start on this machine, the actors' start and their model loading are inside the measured job.
Reported per variant, from the run's record (``OUT/.farslip-done/segment-run.json``): the job's seconds and
inputs/s (start-up included), and the steady rate ``actors / mean seconds per input`` (what the job approaches
when the inputs are many). A CPU actor computes with as many torch threads as CPUs it holds (on a 2-core
machine: 1 actor, 2 threads; 2 actors, 1 thread each), and the Ray children run without the benchmark's
``OMP_NUM_THREADS`` (Ray sets it per worker); the local run has the benchmark's ``--threads``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_segment import CLASSES, write_raster
from common import child_env, run_child


def segment_job(scenes: Path, ckpt: Path, out: Path, engine: list[str], env: dict, device: str) -> dict:
    cmd = [sys.executable, "-m", "farslip", "segment", str(scenes / "*.tif"), "--checkpoint", str(ckpt),
           "--classes", *CLASSES, "--out", str(out), "--no-progress", "--device", device, *engine]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} exited with {proc.returncode}\n{proc.stderr[-3000:]}")
    record = json.loads((out / ".farslip-done" / "segment-run.json").read_text())
    per_input = [o["seconds"] for o in record["outcomes"] if o["status"] == "done"]
    workers = max(1, record["processes"])
    return {"engine": record["engine"], "processes": record["processes"], "inputs": record["done"],
            "job_s": record["seconds"], "wall_s": wall, "inputs_per_s": record["done"] / record["seconds"],
            "mpx_per_s": record["megapixels_per_s"], "mean_s_per_input": sum(per_input) / len(per_input),
            "steady_inputs_per_s": workers * len(per_input) / sum(per_input),
            "command": " ".join(cmd[1:])}


def run(cfg: dict, log) -> dict:
    work = Path(tempfile.mkdtemp(prefix="farslip-bench-ray-"))
    out = {"arch": cfg["ray_arch"], "inputs": cfg["ray_inputs"], "size": cfg["ray_size"], "runs": {}}
    try:
        ckpt = work / "model.pt"
        run_child("segment_checkpoint", {"arch": cfg["ray_arch"], "path": str(ckpt)}, cfg["threads"])
        scenes = work / "scenes"
        scenes.mkdir()
        for i in range(cfg["ray_inputs"]):
            write_raster(scenes / f"scene{i:03d}.tif", cfg["ray_size"])
        log(f"[ray] {cfg['ray_inputs']} rasters of {cfg['ray_size']} x {cfg['ray_size']} written; "
            f"farslip segment with {cfg['ray_arch']}")
        local_env = child_env(cfg["threads"])
        ray_env = {k: v for k, v in local_env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        variants = {"local": ([], local_env), "ray_1_actor": (["--engine", "ray", "--actors", "1"], ray_env),
                    "ray_2_actors": (["--engine", "ray", "--actors", "2"], ray_env)}
        for name, (engine, env) in variants.items():
            res = segment_job(scenes, ckpt, work / f"out_{name}", engine, env, cfg["device"])
            out["runs"][name] = res
            log(f"[ray] {name}: {res['inputs_per_s']:.3f} inputs/s over the job ({res['job_s']:.1f} s, start-up "
                f"included), steady {res['steady_inputs_per_s']:.3f} inputs/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out

