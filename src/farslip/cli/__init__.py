"""The ``farslip`` command: one module here per room's sub-commands (``add_commands``), and the one place where
user errors become a single line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from ..core.errors import user_error_message

# Rooms that contribute sub-commands, in the order --help lists them. Each module defines
# ``add_commands(subparsers)`` and sets ``func`` on its parsers.
COMMAND_MODULES = (
    "farslip.cli.data",      # farslip data build|validate|stats|synth|caption
    "farslip.cli.train",     # farslip train
    "farslip.cli.eval",      # farslip eval classification|retrieval|ovss|all
    "farslip.cli.infer",     # farslip segment|locate|classify|search|view
    "farslip.cli.quickstart",  # farslip quickstart
    "farslip.cli.models",    # farslip model info|convert
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farslip",
        description="FarSLIP: fine-grained CLIP for remote-sensing imagery -- data, training, evaluation and "
                    "inference on stock open_clip.")
    parser.add_argument("--version", action="version", version=_versions(),
                        help="farslip's version and those of the libraries it runs on (for bug reports)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of a user error too (as FARSLIP_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("farslip", "torch", "open_clip_torch", "torchvision", "rasterio"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts) + f"; Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    debug = args.debug or bool(os.environ.get("FARSLIP_DEBUG"))
    previous = _exit_cleanly_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # A user's mistake (farslip's own errors, a missing or unreadable file, a YAML syntax error): one line
        # naming the file, record or option, exit status 2. Anything else is a bug and keeps its traceback.
        message = user_error_message(exc)
        if message is None or debug:
            raise
        print(f"farslip: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        # Ctrl-C ends like SIGTERM: the exception has unwound every ``finally`` (temporary files removed, a training
        # run's checkpoint written), so one line and the shell's status for SIGINT, never a traceback.
        print("farslip: interrupted (SIGINT); unfinished outputs were removed", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_cleanly_on_sigterm():
    """SIGTERM (a scheduler's or a user's kill) raises SystemExit(143) instead of ending the process on the spot,
    so ``finally`` blocks run and temporary ``.partial`` files are removed; nothing half-written is left behind.
    Returns the previous handler (None when not in the main thread, where handlers cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def _terminate(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, _terminate)


if __name__ == "__main__":
    sys.exit(main())
