"""Bad inputs, reported one way everywhere: a :class:`Problem` names the file, the record and the field.

Reading training data, preparing data, evaluating and inferring all meet inputs they cannot use. None of them
stops for one: they skip the input, count it, and write it as one JSON line (``Problem.to_dict``) to the run's
report (``RUN/skipped.jsonl``, ``OUT/problems.jsonl``, ``results.json``'s skipped list). Code that finds a bad
input deep inside a reader raises :class:`BadInput`, which carries the Problem up to whoever counts it.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    """One thing that went wrong with one input.

    ``kind`` is a short stable tag (``bad-record``, ``bad-object``, ``missing-image``, ``missing-label``,
    ``bad-file``, ``bad-image``, ``degenerate``, ``unknown-category``, ``caption-failed``, ...), ``path`` the file it
    concerns, ``record`` where inside it (``record 7``, ``line 7 object 3``, ``sample 000012``), ``field`` the field
    at fault.
    """

    kind: str
    path: str
    message: str
    record: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.path
        if self.record:
            where += f" ({self.record})"
        if self.field:
            where += f" field {self.field!r}"
        return f"{where}: {self.message} [{self.kind}]"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(d["kind"], d["path"], d["message"], d.get("record"), d.get("field"))


class BadInput(Exception):
    """Raised where one input cannot be used; ``.problem`` says which and why (the caller skips and counts it)."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem

    @classmethod
    def of(cls, kind: str, path: str, message: str, record: str | None = None, field: str | None = None):
        return cls(Problem(kind, str(path), message, record, field))


def summarize_problems(problems: Iterable[Problem]) -> dict[str, int]:
    """Counts per kind, most frequent first."""
    return dict(Counter(p.kind for p in problems).most_common())


def append_problems(path: str | Path, problems: Iterable[Problem | dict]) -> int:
    """Append problems to a JSONL report (one ``Problem.to_dict`` a line); returns how many were written."""
    lines = [json.dumps(p.to_dict() if isinstance(p, Problem) else p, ensure_ascii=False) for p in problems]
    if lines:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return len(lines)


def read_problems(path: str | Path) -> list[Problem]:
    """The problems of a JSONL report written by :func:`append_problems`."""
    text = Path(path).read_text(encoding="utf-8")
    return [Problem.from_dict(json.loads(ln)) for ln in text.splitlines() if ln.strip()]
