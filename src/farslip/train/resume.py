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

from ..core.files import atomic_write
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
