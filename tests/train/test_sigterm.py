"""SIGTERM (a scheduler's preemption, ``kill``, ``scancel``): the run finishes its step, saves that step's checkpoint,
exits with status 143, and ``--resume auto`` continues from exactly there."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.fixtures import REPO, tiny_overrides

RECIPE = REPO / "configs" / "stage1_vitb16_rs5m.yaml"


def _command(over: dict, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    args = []
    for section, values in over.items():
        for k, v in values.items():
            args += ["--set", f"{section}.{k}={'null' if v is None else json.dumps(v)}"]
    return [sys.executable, *launcher, "-m", "farslip", "train", "--config", str(RECIPE), *args, *extra]


def _logged_steps(run: Path) -> list[int]:
    log = run / "log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip() and '"total"' in x]


def _terminate_after(cmd: list[str], run: Path, steps: int) -> subprocess.CompletedProcess:
    """Start ``cmd``, send it SIGTERM once ``steps`` steps are logged, wait for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while len(_logged_steps(run)) < steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _check_stopped_and_resume(over: dict, run: Path, launcher: tuple[str, ...] = ()) -> None:
    done = _terminate_after(_command(over, launcher=launcher), run, steps=2)
    # farslip exits 143; torchrun, told to stop, reports its own SignalException (status 1)
    assert done.returncode == (1 if launcher else 128 + signal.SIGTERM), done.stderr[-3000:]
    assert "SIGTERM: stopping after step" in done.stdout + done.stderr
    saved = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))
    assert saved and saved[-1] >= 2, saved
    stopped = saved[-1]
    assert max(_logged_steps(run)) <= stopped  # the checkpoint is of the last step taken, not one ahead of the log

    over["run"]["stop_after"] = stopped + 2
    resumed = subprocess.run(_command(over, "--resume", "auto", launcher=launcher), capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _logged_steps(run) == list(range(1, stopped + 3))  # every step once, the resumed ones after the stop


def test_sigterm_saves_the_step_and_resume_continues(tmp_path):
    over = tiny_overrides(tmp_path, 1, arch="FarSLIP-Tiny", steps=10_000)
    over["optim"].update(batch_size=2, epochs=1000)
    over["data"].update(workers=1)  # a loader worker too: it must survive a SIGTERM sent to the whole group
    over["run"].update(log_every=1)
    _check_stopped_and_resume(over, Path(over["run"]["out"]))


def test_sigterm_to_torchrun_stops_both_ranks_after_the_same_step(tmp_path):
    over = tiny_overrides(tmp_path, 1, arch="FarSLIP-Tiny", steps=10_000)
    over["optim"].update(batch_size=2, epochs=1000)
    over["run"].update(log_every=1)
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    _check_stopped_and_resume(over, Path(over["run"]["out"]), launcher)
