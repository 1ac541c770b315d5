"""Every ``farslip ...`` example in the README and in every ``--help`` is a command line the parser accepts.

Running each example needs data a user has (benchmarks, checkpoints); what the tests can hold for all of them is
that each names real sub-commands and options with valid values. The examples that need only what the quickstart
writes are run for real by the quickstart and CLI tests.
"""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from farslip.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser, prefix=()):
    """(words, parser) for every sub-command, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subparsers(sub, prefix + (name,))


def _commands(text: str) -> list[str]:
    """Command lines starting with ``farslip`` (backslash continuations joined, comments dropped)."""
    lines, out, current = text.splitlines(), [], None
    for line in lines:
        stripped = line.strip()
        if current is not None:
            current += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                out.append(current)
                current = None
            continue
        m = re.match(r"^(?:\$ )?(farslip\s.*)$", stripped)
        if m:
            cmd = m.group(1)
            if cmd.endswith("\\"):
                current = cmd.rstrip("\\").strip()
            else:
                out.append(cmd)
    return [_drop_comment(c) for c in out]


def _drop_comment(cmd: str) -> str:
    return re.split(r"\s+#\s", cmd, maxsplit=1)[0].strip()


def _readme_commands() -> list[str]:
    """Commands of the README's shell code blocks (```bash, ```sh, ```console)."""
    blocks, current = [], None
    for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line[3:].strip() in ("bash", "sh", "console") else False
            else:
                if current is not False:
                    blocks.append("\n".join(current))
                current = None
        elif isinstance(current, list):
            current.append(line)
    return [c for b in blocks for c in _commands(b)]


def _help_commands() -> list[tuple[str, str]]:
    found = []
    for words, sub in _subparsers(build_parser()):
        for cmd in _commands(sub.epilog or ""):
            found.append((" ".join(words), cmd))
    return found


def _parse(cmd: str) -> None:
    argv = shlex.split(cmd)[1:]
    if any(tok in ("|", ">", "&&") for tok in argv):
        argv = argv[:min(argv.index(t) for t in ("|", ">", "&&") if t in argv)]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise AssertionError(f"the parser refuses: {cmd}") from None


def test_there_are_examples_to_check():
    assert len(_readme_commands()) >= 10 and len(_help_commands()) >= 10


@pytest.mark.parametrize("cmd", _readme_commands())
def test_readme_example_parses(cmd):
    _parse(cmd)


@pytest.mark.parametrize("where,cmd", _help_commands())
def test_help_example_parses(where, cmd, capsys):
    _parse(cmd)


def test_a_wrong_example_is_caught():
    with pytest.raises(AssertionError, match="refuses"):
        _parse("farslip segment x.tif --no-such-option 3")
