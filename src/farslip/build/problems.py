"""Problems met while reading or building data: reported with the file, record and field, never fatal alone."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable


@dataclass(frozen=True)
class Problem:
    """One thing that went wrong with one input.

    ``kind`` is a short stable tag (``missing-image``, ``missing-label``, ``bad-record``, ``bad-file``,
    ``bad-image``, ``degenerate``, ``unknown-category``, ``caption-failed``, ...), ``path`` the file it concerns,
    ``record`` where inside it (``line 7``, ``object 3``, ``annotation id 12``), ``field`` the field at fault.
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
            where += f" [{self.field}]"
        return f"{self.kind}: {where}: {self.message}"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(d["kind"], d["path"], d["message"], d.get("record"), d.get("field"))


def summarize_problems(problems: Iterable[Problem]) -> dict[str, int]:
    """Counts per kind, most frequent first."""
    return dict(Counter(p.kind for p in problems).most_common())
