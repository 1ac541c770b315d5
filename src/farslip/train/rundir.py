"""A run owns its folder. ``run.json`` names the run (a random id); every checkpoint carries the same id.

* A fresh start refuses a folder that holds another run, unless asked to ``overwrite`` it (its files are removed,
  so nothing of the old run is appended to or resumed later).
* ``resume="auto"`` continues only the run recorded in the folder: checkpoints of another run are passed over.
  With no intact checkpoint the recorded run starts again from step 0 (its log is restarted, never appended to).
* ``resume=PATH`` continues the run of that checkpoint, in an empty folder or in the folder of that same run.
"""
from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import UsageError
from ..core.files import atomic_write
from ..models.checkpoint_io import CheckpointError
from .checkpoint import list_checkpoints, load_training_checkpoint

RUN_FILE = "run.json"
# Everything a run writes into its folder; --overwrite removes exactly these (a user's other files stay).
RUN_FILES = (RUN_FILE, "config.yaml", "log.jsonl", "skipped.jsonl", "summary.json", "final.pt", "checkpoints",
             "tensorboard", "resumes.jsonl")


class RunStartError(UsageError):
    """The run cannot start as asked: the folder holds another run, or the checkpoint belongs elsewhere or is bad."""


@dataclass
class RunStart:
    """How a run starts: its id, and the checkpoint it continues from (None: from step 0)."""
    run_id: str
    checkpoint: Path | None = None
    state: dict | None = None
    review: Any = None  # resume.ResumeReview: what changed since the checkpoint (rank 0 only)

    @property
    def step(self) -> int:
        return int(self.state["progress"]["step"]) if self.state is not None else 0


def recorded_run(run_dir: Path) -> str | None:
    """The run id written in the folder's run file (None when the folder records no run)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RunStartError(f"{path}: not a farslip run file ({type(exc).__name__}: {exc}); "
                             "remove it or choose another run.out") from None


def run_files(run_dir: Path) -> list[Path]:
    return [Path(run_dir) / name for name in RUN_FILES if (Path(run_dir) / name).exists()]


def refuse_run_over_inputs(run_dir: Path, inputs: Iterable) -> None:
    """What a run writes into its folder, and ``--overwrite`` removes (:data:`RUN_FILES`), must not be what it
    reads: a stage-2 run with ``run.out`` at the stage-1 folder would replace -- or, with ``--overwrite``, delete
    before loading -- the ``final.pt`` it starts from. ``inputs``: paths, lists of them, ``a::b`` specs, None."""
    written = [(Path(run_dir) / name).resolve() for name in RUN_FILES]
    for value in inputs:
        parts = value if isinstance(value, (list, tuple)) else str(value or "").split("::")
        for part in map(str, parts):
            if not part or "://" in part:
                continue
            src = Path(part).resolve()
            hit = next((w for w in written if src == w or w in src.parents), None)
            if hit is not None:
                raise RunStartError(f"{part} is read by this run but lies where it writes in run.out ({hit}); "
                                    "choose another run.out")


def plan_start(run_dir: Path, resume: str | None, overwrite: bool) -> RunStart:
    """Decide how a run in ``run_dir`` starts, or refuse with one line. Reads the folder, changes nothing."""
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise RunStartError("--overwrite starts a run over and --resume continues one; give one of them")
    recorded = recorded_run(run_dir)
    if resume == "auto":
        return _resume_newest(run_dir, recorded)
    if resume:
        return _resume_from(run_dir, Path(resume), recorded)
    if run_files(run_dir) and not overwrite:
        raise RunStartError(f"{run_dir} holds {_describe(run_dir, recorded)}; continue it with --resume auto, or "
                             f"start over with --overwrite (removes its log, checkpoints and final model)")
    return RunStart(new_run_id())


def _resume_newest(run_dir: Path, recorded: str | None) -> RunStart:
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_training_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - any failure means "not intact"
            print(f"[farslip] skipping unreadable checkpoint {path}: {type(exc).__name__}: {exc}")
            continue
        owner = state.get("run_id")
        if recorded is not None and owner is not None and owner != recorded:
            print(f"[farslip] skipping {path}: it belongs to run {owner}, not to run {recorded} of {run_dir}")
            continue
        print(f"[farslip] resuming run {recorded or owner or '(unnamed)'} from {path}")
        return RunStart(recorded or owner or new_run_id(), path, state)
    if recorded is not None or run_files(run_dir):
        print(f"[farslip] no intact checkpoint of {_describe(run_dir, recorded)} in {run_dir}; "
              "starting it again from step 0")
    else:
        print(f"[farslip] no checkpoint in {run_dir}; fresh start")
    return RunStart(recorded or new_run_id())


def _resume_from(run_dir: Path, path: Path, recorded: str | None) -> RunStart:
    try:
        state = load_training_checkpoint(path)
    except (CheckpointError, OSError) as exc:
        raise RunStartError(f"--resume {path}: {exc}") from exc
    owner = state.get("run_id")
    inside = path.resolve().parent == (run_dir / "checkpoints").resolve()
    if recorded is not None and owner != recorded:
        raise RunStartError(f"{path} is a checkpoint of run {owner or '(unnamed)'}, but {run_dir} holds run "
                             f"{recorded}; resume it into its own folder or an empty one (run.out)")
    if recorded is None and run_files(run_dir) and not inside:
        raise RunStartError(f"{run_dir} holds {_describe(run_dir, recorded)}; resume {path} into an empty folder "
                             "(run.out)")
    return RunStart(recorded or owner or new_run_id(), path, state)


def _describe(run_dir: Path, recorded: str | None) -> str:
    steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run_dir)]
    what = f"run {recorded}" if recorded else "another run"
    return what + (f" (checkpoints up to step {max(steps)})" if steps else "")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def clear_run(run_dir: Path) -> None:
    """Remove what a run wrote (``--overwrite``); other files in the folder stay."""
    for path in run_files(run_dir):
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def take_folder(run_dir: Path, start: RunStart, name: str, config: dict, overwrite: bool) -> None:
    """Write what makes ``run_dir`` this run's: remove the old run's files (``overwrite``), the run file,
    ``config.yaml``, and what a resume changed (``resumes.jsonl``)."""
    import yaml

    if overwrite:
        clear_run(run_dir)
    record_run(run_dir, start.run_id, name)
    atomic_write(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    if start.review is not None:
        start.review.record(run_dir, start.step, start.checkpoint)


def record_run(run_dir: Path, run_id: str, name: str) -> None:
    """Write the run file (atomically: a half-written run file would lock the folder)."""
    atomic_write(run_dir / RUN_FILE, json.dumps({"run_id": run_id, "name": name}, indent=2) + "\n")
