"""The house rules, read from the code, so that what docs/architecture.md says cannot drift:

* no module imports a room above it in the flow
      core -> dataprep -> data -> models -> objectives -> train -> engine -> eval -> infer -> quickstart, cli
* infer never reaches into eval (what both need lives in engine, and rank plumbing in core);
* no module imports another room's private names (``_name``): a room is used through what it offers
  (user errors as FarslipErrors, never ``SystemExit("message")``: tests/reliability/test_cli_errors.py).

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
#: Pairs (importer, imported) the order allows but the house does not.
FORBIDDEN = {("infer", "eval")}


def room_of(path: Path) -> str | None:
    """The room a module belongs to: its first folder under farslip/ (or quickstart/cli as named)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts[0] in LEVEL else None


def imported_rooms(path: Path) -> list[tuple[int, str]]:
    """(line, room) of every farslip room this module imports."""
    return [(line, room) for line, room, _ in imported_names(path)]


def imported_names(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, room, names taken with ``from ... import``) of every farslip room this module imports."""
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
        names = [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) and node.module else []
        for t in targets:
            if len(t) >= 2 and t[0] == "farslip" and t[1] in LEVEL:
                found.append((node.lineno, t[1], names))
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


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_forbidden_import_and_no_private_name_from_another_room(path):
    own = room_of(path)
    forbidden = [(line, room) for line, room in imported_rooms(path) if (own, room) in FORBIDDEN]
    assert not forbidden, f"{path.relative_to(PACKAGE)} ({own}) imports {forbidden} (see docs/architecture.md)"
    private = [(line, room, n) for line, room, names in imported_names(path) if room != own
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, f"{path.relative_to(PACKAGE)} imports private names of other rooms: {private}"


def test_the_checker_sees_forbidden_pairs_and_private_names():
    fake = PACKAGE / "infer" / "__planted_for_test__.py"
    fake.write_text("from ..eval.metrics import _secret\n")
    try:
        [(line, room, names)] = imported_names(fake)
        assert ("infer", room) in FORBIDDEN and names == ["_secret"]
    finally:
        fake.unlink()

