"""Training checkpoints: atomic, keep-last-N, and everything needed to resume bit-exactly.

A checkpoint is also a model file: ``farslip.load_model(checkpoint=path)`` reads it with no other argument.
"""
from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..models.checkpoint_io import META_KEY, CheckpointError, write_checkpoint
from ..models.loading import model_meta

PATTERN = re.compile(r"step_(\d+)\.pt$")


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt"


def save_training_checkpoint(run_dir: Path, model, *, optimizer, scaler, teacher, progress: dict, ranks: list[dict],
                             run_id: str, config: dict, keep_last: int, sharded: str | None = None) -> Path:
    """Write ``step_N.pt``. ``progress`` is the run's (step, epoch, ...); ``ranks`` holds each rank's own state
    (``data``: the loader's place and skip counts; ``rng``: RNG states), so every rank resumes where it stopped.
    ``sharded``: the model and optimiser state are in that folder next to it (FSDP, train/sharding.py), not here."""
    path = checkpoint_path(run_dir, progress["step"])
    extra = {
        "optimizer": {} if sharded else optimizer.state_dict(),
        "sharded": sharded,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "teacher": teacher.state_dict() if teacher is not None else None,
        "progress": progress,
        "ranks": ranks,
        "run_id": run_id,
        "config": config,
        "git_commit": git_commit(),
    }
    write_checkpoint(path, {} if sharded else model.state_dict(), model_meta(model), extra)
    for old in sorted(list_checkpoints(run_dir))[:-keep_last] if keep_last > 0 else []:
        old.unlink(missing_ok=True)
        shutil.rmtree(old.with_suffix(".dcp"), ignore_errors=True)
    return path


def rank_states(state: dict) -> list[dict]:
    """Every rank's saved state (``data``, ``rng``), in rank order. A checkpoint from before per-rank state holds
    one process's."""
    return list(state.get("ranks") or [_single_process_state(state)])


def _single_process_state(state: dict) -> dict:
    progress = state["progress"]
    return {"rng": state["rng"],
            "data": {"epoch": progress["epoch"], "batch_in_epoch": progress["batch_in_epoch"],
                     "cursors": progress.get("cursors", {}), "skipped_records": progress.get("skipped", 0),
                     "object_fixes": progress.get("notes", 0)}}


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    return sorted((p for p in folder.glob("step_*.pt") if PATTERN.search(p.name)), key=lambda p: p.name)


def load_training_checkpoint(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding objects weights_only refuses
        raise CheckpointError(f"{path}: cannot be read as a training checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    for key in ("state_dict", META_KEY, "optimizer", "progress"):
        if not isinstance(payload, dict) or key not in payload:
            raise CheckpointError(f"{path}: not a farslip training checkpoint (no {key!r})")
    if "ranks" not in payload and "rng" not in payload:
        raise CheckpointError(f"{path}: not a farslip training checkpoint (no RNG state)")
    if payload.get("sharded"):  # the model and optimiser shards: a folder next to the file
        payload["sharded"] = str(Path(path).parent / payload["sharded"])
        if not Path(payload["sharded"]).is_dir():
            raise CheckpointError(f"{path}: its sharded model and optimiser state {payload['sharded']} is missing")
    return payload
