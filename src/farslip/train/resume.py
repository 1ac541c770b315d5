"""What a resume may change. The checkpoint carries the config that made it; the new one is compared key by key
(``reference.KEYS`` sorts each key): a change that makes the continued run another run -- data, batch,
schedule, objective, model, seed -- is refused with the list of differences unless the caller accepts it
(``--resume-changed``); a harmless one (logging, saving, validation, the device) passes with a note. Either way
the changes are written to ``RUN/resumes.jsonl`` and ``config.yaml`` becomes the new config.

Another number of processes (or loader workers) is an elastic resume: the rest of the epoch is re-dealt to the
new ranks (``TrainLoader.load_elastic_state``) and the schedule is fitted to the steps that remain."""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..core import distributed
from ..core.files import atomic_write
from ..data.loader import TrainLoader
from .checkpoint import rank_states, set_rng_state
from .reference import KEYS
from .rundir import RunStartError

RESUMES_FILE = "resumes.jsonl"


@dataclass
class ResumeReview:
    """How a checkpoint's run is continued: the config keys that changed (``{key: (before, after)}``) by kind,
    and the processes before and now."""
    changes: dict[str, dict[str, tuple]] = field(default_factory=dict)   # kind -> {key: (before, after)}
    processes: tuple[int, int] = (1, 1)
    accepted: bool = False

    def lines(self) -> list[str]:
        """What the resume note says."""
        out = []
        for kind, label in (("free", "changed (harmless)"), ("layout", "changed (re-deals the epoch)"),
                            ("exact", "changed (accepted by --resume-changed)")):
            if self.changes.get(kind):
                out.append(f"{label}: {_listed(self.changes[kind])}")
        if self.processes[0] != self.processes[1]:
            out.append(f"processes: {self.processes[0]} -> {self.processes[1]} (elastic: the rest of the epoch is "
                       "re-dealt so every sample is still trained on once; see docs/training.md)")
        return out

    def record(self, run_dir: Path, step: int, checkpoint) -> None:
        """Append this resume to ``RUN/resumes.jsonl`` (when anything changed)."""
        if not self.changes and self.processes[0] == self.processes[1]:
            return
        entry = {"step": step, "checkpoint": str(checkpoint), "processes": list(self.processes),
                 "changes": {k: list(v) for kind in self.changes.values() for k, v in kind.items()},
                 "accepted": "--resume-changed" if self.changes.get("exact") else "harmless",
                 "when": _dt.datetime.now().isoformat(timespec="seconds")}
        path = Path(run_dir) / RESUMES_FILE
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        atomic_write(path, before + json.dumps(entry, default=str) + "\n")


def review_resume(saved: dict | None, now: dict, saved_processes: int, processes: int, accept_changed: bool,
                  checkpoint) -> ResumeReview:
    """Compare the checkpoint's config with the new one; refuse (one line listing the differences) a change that
    breaks exactness unless ``accept_changed``."""
    review = ResumeReview(processes=(saved_processes, processes), accepted=accept_changed)
    if saved is None:  # a checkpoint from before configs were saved in it: nothing to compare
        return review
    before, after = _flat(saved), _flat(now)
    for key in after:
        if key in before and not _same(before[key], after[key]):
            kind = KEYS[key].resume if key in KEYS else "exact"
            review.changes.setdefault(kind, {})[key] = (before[key], after[key])
    exact = review.changes.get("exact")
    if exact and not accept_changed:
        raise RunStartError(
            f"{checkpoint} was made with another config: {_listed(exact)} -- continuing would not be the run the "
            "checkpoint began; pass --resume-changed (resume_changed=True) to continue with the new values "
            "anyway (recorded in RUN/resumes.jsonl), or start a new run in another run.out")
    return review


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _listed(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{key} {_shown(a)} -> {_shown(b)}" for key, (a, b) in changes.items())


def _shown(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (str, list)) else f"{value}"


def restore_position(state: dict, loader: TrainLoader, ctx: distributed.Dist, cfg) -> None:
    """This rank's place in the data and RNG states from the checkpoint ``state``. A checkpoint of another number
    of processes, loader workers or batch size is an elastic resume: the rest of its epoch is re-dealt to this
    run's ranks (every sample still trained on once), ranks that existed before take their RNG states, new ones
    start from ``run.seed + rank`` (set when the job was built)."""
    ranks = rank_states(state)
    saved_workers = ((state.get("config") or {}).get("data") or {}).get("workers", cfg.data.workers)
    if not _layout_changed(ranks, ctx.world, loader, saved_workers, cfg):
        loader.load_state_dict(ranks[ctx.rank]["data"])
        set_rng_state(ranks[ctx.rank]["rng"])
        return
    loader.load_elastic_state([r["data"] for r in ranks], saved_workers)
    if ctx.is_main:
        print(f"[farslip] elastic resume: the rest of epoch {loader.state_dict()['epoch']} ({loader.epoch_steps()} "
              f"steps) is dealt to {ctx.world} process(es) of {loader.batch_size} samples, from {len(ranks)} before")
    if ctx.rank < len(ranks):
        set_rng_state(ranks[ctx.rank]["rng"])


def _layout_changed(ranks: list[dict], world: int, loader: TrainLoader, saved_workers: int, cfg) -> bool:
    """Whether the checkpoint's data positions are in terms of another spread of the work: processes, the
    samples of a step, or (a stream's roles) loader workers."""
    batch = ranks[0]["data"].get("batch_size", loader.batch_size)
    workers_changed = cfg.data.kind == "webdataset" and max(1, saved_workers) != max(1, cfg.data.workers)
    return len(ranks) != world or batch != loader.batch_size or workers_changed
