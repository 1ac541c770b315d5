"""The class-name files farslip ships -- SegEarth-OV's, one per OVSS benchmark, and SegEarth-OV3's where they differ
(``ov3_loveda``, ``ov3_potsdam``, ``ov3_vaihingen``) -- by name.

``--classes-file openearthmap`` (or ``cls_openearthmap``, ``cls_openearthmap.txt``) finds the packaged
``resources/cls_openearthmap.txt``; a path to an existing file always wins over a name.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from ..core.errors import UsageError


def shipped_class_files() -> dict[str, Path]:
    """Name -> packaged file, e.g. ``{"loveda": .../resources/cls_loveda.txt, ...}``."""
    folder = Path(str(resources.files("farslip") / "resources"))
    return {p.stem[len("cls_"):]: p for p in sorted(folder.glob("cls_*.txt"))}


def resolve_class_file(value: str | os.PathLike) -> Path:
    """The class file meant by ``value``: an existing file, else a shipped set's name; otherwise one clear error."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = shipped_class_files()
    key = path.name.lower().removesuffix(".txt").removeprefix("cls_")
    if path.parent == Path(".") and key in shipped:
        return shipped[key]
    raise UsageError(f"class file not found: {value} (give a file, or a shipped set: {', '.join(shipped)})")
