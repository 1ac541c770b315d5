"""The house rule, read from the code: no module imports a room above it in the flow.

    core -> dataprep -> data -> models -> objectives -> train -> engine -> eval -> infer -> quickstart, cli

Data preparation feeds the training data readers; the dense-prediction engine serves evaluation and inference
from below; the CLI (and the quickstart, which runs every room) sits on top. Relative and absolute imports of
``farslip.<room>`` both count, at any depth (imports inside functions too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "farslip"
ORDER = ["core", "dataprep", "data", "models", "objectives", "train", "engine", "eval", "infer", "quickstart", "cli"]
LEVEL = {room: i for i, room in enumerate(ORDER)}


def room_of(path: Path) -> str | None:
    """The room a module belongs to: its first folder under farslip/ (or quickstart/cli as named)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts[0] in LEVEL else None


def imported_rooms(path: Path) -> list[tuple[int, str]]:
    """(line, room) of every farslip room this module imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # ("farslip", "eval", ...)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                mod = base + (node.module.split(".") if node.module else [])
                targets = [mod + [alias.name] for alias in node.names] if not node.module else [mod]
            else:
                targets = [(node.module or "").split(".")]
        else:
            continue
        for t in targets:
            if len(t) >= 2 and t[0] == "farslip" and t[1] in LEVEL:
                found.append((node.lineno, t[1]))
    return found


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if room_of(p) is not None)


def test_every_room_is_in_the_order():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    rooms -= {"model_configs", "resources"}  # data folders, no code
    assert rooms <= set(LEVEL), f"rooms missing from the import order: {sorted(rooms - set(LEVEL))}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_room_above_its_own(path):
    own = room_of(path)
    above = [(line, room) for line, room in imported_rooms(path) if LEVEL[room] > LEVEL[own]]
    assert not above, f"{path.relative_to(PACKAGE)} ({own}) imports rooms above it: " + ", ".join(
        f"{room} (line {line})" for line, room in above)


def test_the_checker_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The rule must be able to fail: a planted upward import is found."""
    fake = PACKAGE / "data" / "__planted_for_test__.py"
    fake.write_text("from ..eval import ovss\nimport farslip.infer\n\ndef f():\n    from ..engine.windows import x\n")
    try:
        assert {room for _, room in imported_rooms(fake)} == {"eval", "infer", "engine"}
    finally:
        fake.unlink()
