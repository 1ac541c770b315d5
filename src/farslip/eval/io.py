"""Reading evaluation inputs: CSV tables, class-name files, images and label maps, with errors that name the file,
the record and the field at fault.

Bad records can either stop the run (``on_error="raise"``, the default of the Python API) or be skipped and
counted (``on_error="skip"``, what the benchmark suites use). Datasets never raise inside DataLoader workers:
they hand back a :class:`~farslip.core.problems.Problem`, and the consumer decides in the main process.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.errors import FarslipError
from ..core.problems import Problem


class EvalDataError(FarslipError, ValueError):
    """An evaluation input that cannot be used; the message names the file, record and field."""


class ErrorPolicy:
    """Collects bad records (:class:`~farslip.core.problems.Problem`): raises on the first one (``"raise"``) or
    counts them (``"skip"``); ``summary()`` lists the first ``keep`` as Problem dicts."""

    def __init__(self, on_error: str = "raise", keep: int = 20):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.count = 0
        self.examples: list[Problem] = []
        self.keep = keep

    def __call__(self, problem: Problem) -> None:
        if self.on_error == "raise":
            raise EvalDataError(str(problem))
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(problem)

    def summary(self) -> dict:
        return {"skipped": self.count, "errors": [p.to_dict() for p in self.examples]}


# ----------------------------------------------------------------------------------------------------------------
# Tables and name files

@dataclass
class CsvRow:
    line: int          # 1-based line number in the file (header is line 1)
    values: dict


def read_csv(path: str | os.PathLike, required: Sequence[str], sep: str = ",") -> list[CsvRow]:
    """Rows of a delimited table as dicts, checking that the ``required`` columns exist.

    Quoting follows the csv module (the same conventions pandas reads). Raises :class:`EvalDataError` naming the
    file and the missing column (and the columns it does have).
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        fields = reader.fieldnames or []
        missing = [c for c in required if c not in fields]
        if missing:
            raise EvalDataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                                f"columns found: {', '.join(map(repr, fields)) or 'none (empty file?)'}"
                                + ("" if sep != "," or len(fields) != 1 else " -- wrong separator?"))
        rows = []
        for values in reader:
            rows.append(CsvRow(reader.line_num, values))
    return rows


def read_name_lines(path: str | os.PathLike) -> list[str]:
    """One name a line, stripped (SkyScript's ``classnames.txt`` convention); blank lines are an error."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    for i, name in enumerate(names):
        if not name:
            raise EvalDataError(f"{path}:{i + 1}: empty class name")
    if not names:
        raise EvalDataError(f"{path}: no class names")
    return names


def read_synonym_file(path: str | os.PathLike) -> list[list[str]]:
    """SegEarth-OV class file: one class a line in label order, synonyms separated by commas."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    classes = []
    for i, line in enumerate(lines):
        names = [n.strip() for n in line.split(",")]
        if not all(names):
            raise EvalDataError(f"{path}:{i + 1}: empty class name in {line!r}")
        classes.append(names)
    if not classes:
        raise EvalDataError(f"{path}: no class names")
    return classes


# ----------------------------------------------------------------------------------------------------------------
# Images


