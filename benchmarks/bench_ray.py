"""``farslip segment --engine ray`` over many generated rasters: inputs/s with 1 and 2 local model actors, and the
same job on one process (``--engine local``) for reference.

Every variant computes with one torch thread per worker, so the figures say how the engine scales with actors
and not how OpenMP scales with threads (on a loaded 2-core machine two threads can be several times slower than
one). The Ray variants run in a child process that starts a local Ray with as many CPUs as actors
(``ray.init(num_cpus=N)``; the job joins it, as it joins any Ray its process has joined) and calls
``farslip.segment(..., engine="ray", actors=N)``; the local one is ``python -m farslip segment`` with
``OMP_NUM_THREADS=1``. Each writes a fresh output folder. Reported per variant, from the run's record: the job's
seconds and inputs/s (the actors' start and model loading included; Ray's own start is reported apart), and the
steady rate ``workers / mean seconds per input`` that the job approaches when the inputs are many.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_segment import CLASSES, write_raster
from common import emit, run_child, run_measured


def rates(record: dict) -> dict:
    per_input = [o["seconds"] for o in record["outcomes"] if o["status"] == "done"]
    workers = max(1, record["processes"])
    return {"engine": record["engine"], "processes": record["processes"], "inputs": record["done"],
            "job_s": record["seconds"], "inputs_per_s": record["done"] / record["seconds"],
            "mpx_per_s": record["megapixels_per_s"], "mean_s_per_input": sum(per_input) / len(per_input),
            "steady_inputs_per_s": workers * len(per_input) / sum(per_input)}


def child_ray_segment(p: dict) -> None:
    import ray

    import farslip

    # the machine is shared: Ray must not kill the actors when other processes take the memory past its 95% line
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=p["actors"], include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level=logging.WARNING)
    started = time.perf_counter() - t0
    run = farslip.segment(p["inputs"], CLASSES, checkpoint=p["checkpoint"], out=p["out"], engine="ray",
                          actors=p["actors"], device="cpu", progress=False, log=None)
    ray.shutdown()
    emit({**rates(run.summary()), "ray_start_s": started})


def run(cfg: dict, log) -> dict:
    work = Path(tempfile.mkdtemp(prefix="farslip-bench-ray-"))
    out = {"arch": cfg["ray_arch"], "inputs": cfg["ray_inputs"], "size": cfg["ray_size"], "threads_per_worker": 1,
           "runs": {}}
    try:
        ckpt = work / "model.pt"
        run_child("segment_checkpoint", {"arch": cfg["ray_arch"], "path": str(ckpt)}, 1)
        scenes = work / "scenes"
        scenes.mkdir()
        for i in range(cfg["ray_inputs"]):
            write_raster(scenes / f"scene{i:03d}.tif", cfg["ray_size"])
        log(f"[ray] {cfg['ray_inputs']} rasters of {cfg['ray_size']} x {cfg['ray_size']} written; "
            f"farslip segment with {cfg['ray_arch']}, one thread per worker")
        inputs = str(scenes / "*.tif")
        cmd = [sys.executable, "-m", "farslip", "segment", inputs, "--checkpoint", str(ckpt), "--classes", *CLASSES,
               "--out", str(work / "out_local"), "--no-progress", "--device", "cpu"]
        r = run_measured(cmd, 1)
        out["runs"]["local"] = {**rates(json.loads((work / "out_local" / ".farslip-done" / "segment-run.json")
                                                   .read_text())), "wall_s": r["child_wall_s"]}
        for actors in (1, 2):
            r = run_child("ray_segment", {"inputs": inputs, "checkpoint": str(ckpt), "actors": actors,
                                          "out": str(work / f"out_ray{actors}")}, 1)
            out["runs"][f"ray_{actors}_actor{'s' if actors > 1 else ''}"] = {**r, "wall_s": r["child_wall_s"]}
        for name, x in out["runs"].items():
            log(f"[ray] {name}: {x['inputs_per_s']:.3f} inputs/s over the job ({x['job_s']:.1f} s), steady "
                f"{x['steady_inputs_per_s']:.3f} inputs/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


CHILDREN = {"ray_segment": child_ray_segment}
