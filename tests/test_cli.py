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


# What a command may not load before it has work to do: --help and a mistyped option answer at once (about 0.3 s
# against 6-13 s with torch; measured in docs/performance.md, not timed here).
HEAVY = ("torch", "open_clip", "torchvision", "rasterio", "matplotlib", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["eval", "ovss", "--help"],
                                  ["segment", "--no-such-option"], ["eval", "ovss", "--protocol", "nonsense"],
                                  ["quickstart", "--size", "huge"], ["model"]])
def test_help_and_argument_errors_load_no_heavy_library(argv):
    import subprocess
    import sys

    from support.hostile import cli_env

    code = ("import sys\nfrom farslip.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('loaded:', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=cli_env(),
                          timeout=120)
    assert proc.stdout.splitlines()[-1] == "loaded: []", proc.stdout[-500:] + proc.stderr[-2000:]
