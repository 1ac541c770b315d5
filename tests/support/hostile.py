"""Running the ``farslip`` command as a careless or hostile user would, and checking what a careful user expects
of the answer: a user's mistake is one line on stderr naming the culprit, exit status 2, no traceback."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def run_cli(capsys, *argv: str | os.PathLike) -> Outcome:
    """``farslip ARGV`` in this process (fast: the tiny architecture registered by conftest is visible)."""
    from farslip.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_user_error(outcome: Outcome, *names: str) -> str:
    """Exit status 2, one line on stderr that mentions each of ``names``, no traceback; returns the line."""
    lines = [ln for ln in outcome.err.splitlines() if ln.strip() and not ln.startswith(("note:", "skipped:"))]
    assert outcome.code == 2, (outcome.code, outcome.err)
    assert "Traceback" not in outcome.err, outcome.err
    assert len(lines) == 1, outcome.err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder`` (to prove inputs were left alone)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_env(extra_config_dir: str | os.PathLike | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
    env.pop("FARSLIP_DEBUG", None)
    if extra_config_dir:
        env["FARSLIP_TEST_MODEL_CONFIGS"] = str(extra_config_dir)
    return env


# A subprocess running ``farslip`` that knows the tests' tiny architecture (the config folder is passed in).
SUBPROCESS_MAIN = """
import os, sys, open_clip, torch
torch.set_num_threads(1)
if os.environ.get("FARSLIP_TEST_MODEL_CONFIGS"):
    open_clip.add_model_config(os.environ["FARSLIP_TEST_MODEL_CONFIGS"])
from farslip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_cli(*argv: str | os.PathLike, config_dir=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SUBPROCESS_MAIN, *map(str, argv)], env=cli_env(config_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def terminate_when(proc: subprocess.Popen, ready, timeout: float = 120.0,
                   signum: int = signal.SIGTERM) -> tuple[int, str, str]:
    """Send ``signum`` (SIGTERM; SIGINT is Ctrl-C) once ``ready()`` is true (polled), then wait;
    ``(returncode, stdout, stderr)``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"the command ended (rc {proc.returncode}) before the moment to stop it:\n{err}")
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def write_geotiff(path, arr, nodata=None):
    """A GeoTIFF (UTM 33N, 0.5 m pixels) of ``arr`` ``[bands, h, w]``."""
    import rasterio
    from rasterio.transform import from_origin

    count, h, w = arr.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=count, dtype=arr.dtype,
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5), nodata=nodata) as dst:
        dst.write(arr)
    return path
