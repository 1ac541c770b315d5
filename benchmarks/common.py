"""Shared helpers of the benchmarks: timing, memory, child processes, machine facts.

Every measurement that reports memory runs in a child process of its own (``run.py --child ...``): CPU peak
memory is the child's ``ru_maxrss`` (``os.wait4`` gives the rusage of exactly that child), GPU peak memory is
``torch.cuda.max_memory_allocated``. Timings are medians of several repeats after warm-up.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The straightforward transcriptions of the official code that the fast paths are timed against live with the
# tests that hold them equal (tests/support/reference_*.py).
sys.path.insert(0, str(ROOT / "tests"))


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_child(kind: str, params: dict, threads: int, timeout: float | None = None, env: dict | None = None) -> dict:
    """Run ``run.py --child kind`` with ``params`` (and the variables ``env``); return its JSON result plus the
    child's peak RSS (MiB).

    The child prints one line ``RESULT {json}`` on stdout; its stderr passes through.
    """
    cmd = [sys.executable, str(HERE / "run.py"), "--child", kind, "--params", json.dumps(params)]
    return run_measured(cmd, threads, timeout, parse_result=True, env=env)


def run_measured(cmd: list[str], threads: int, timeout: float | None = None, parse_result: bool = False,
                 cwd: str | None = None, env: dict | None = None) -> dict:
    """Run ``cmd``; wall time and the peak RSS of exactly this command (``os.wait4``, through ``launch.py`` so that
    this process's own RSS is not counted in the child's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HERE / "launch.py"), *cmd], stdout=subprocess.PIPE, stderr=None,
                            env={**child_env(threads), **(env or {})}, text=True, cwd=cwd)
    out_lines = []
    deadline = None if timeout is None else t0 + timeout
    assert proc.stdout is not None
    for line in proc.stdout:  # stream (children print progress on stderr, the result on stdout)
        out_lines.append(line)
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
            break
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stdout = "".join(out_lines)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}\n{stdout[-3000:]}")
    res: dict = {}
    if parse_result:
        for line in out_lines:
            if line.startswith("RESULT "):
                res = json.loads(line[len("RESULT "):])
    else:
        res["stdout"] = stdout
    res["child_wall_s"] = wall
    # ru_maxrss is in KiB on Linux; the command's own, as launch.py reports it
    peak = [int(line.split()[1]) for line in out_lines if line.startswith("PEAK_RSS_KIB ")]
    res["child_peak_rss_mib"] = (peak[-1] if peak else usage.ru_maxrss) / 1024
    return res


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def rss_now_mib() -> float:
    """Current resident set size of this process (MiB), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def timeit(fn, repeats: int, warmup: int, sync=None) -> list[float]:
    """Wall seconds of ``fn()`` for each of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t)
    return out


def load_snapshot() -> dict:
    la = os.getloadavg()
    return {"loadavg_1m": round(la[0], 2), "loadavg_5m": round(la[1], 2), "loadavg_15m": round(la[2], 2)}


def machine_info(device: str) -> dict:
    import open_clip
    import torch
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "torchvision": torchvision.__version__, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("Model name", "Core(s) per socket", "Thread(s) per core", "Socket(s)"):
                info[key.strip()] = val.strip()
            if key.strip() == "Flags":
                info["avx512_bf16"] = "avx512_bf16" in val.split()
                info["amx_bf16"] = "amx_bf16" in val.split()
    except OSError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def fmt(x, nd=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{nd}f}"
    return str(x)
