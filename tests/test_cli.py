"""The ``farslip`` entry point: every room's commands are registered, --version names what a bug report needs."""
from __future__ import annotations

import pytest

import farslip
from farslip.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"farslip {farslip.__version__}" in out and "torch " in out and "open_clip_torch " in out


def test_every_command_is_registered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"data", "train", "eval", "segment", "locate", "classify", "search", "view", "quickstart",
                                "model"}


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out
