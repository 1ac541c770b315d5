"""The ``farslip`` command: one module here per room's sub-commands (``add_commands``), and the one place where
user errors become a single line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..core.errors import FarslipError

# Rooms that contribute sub-commands, in the order --help lists them. Each module defines
# ``add_commands(subparsers)`` and sets ``func`` on its parsers.
COMMAND_MODULES = (
    "farslip.cli.data",      # farslip data build|validate|stats|synth|caption
    "farslip.cli.train",     # farslip train
    "farslip.cli.eval",      # farslip eval classification|retrieval|ovss|all
    "farslip.cli.infer",     # farslip segment|locate|classify|search|view
    "farslip.quickstart",    # farslip quickstart
    "farslip.cli.models",    # farslip model info|convert
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="farslip",
        description="FarSLIP: fine-grained CLIP for remote-sensing imagery -- data, training, evaluation and "
                    "inference on stock open_clip.")
    parser.add_argument("--version", action="version", version=_versions(),
                        help="farslip's version and those of the libraries it runs on (for bug reports)")
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
    try:
        return int(args.func(args) or 0)
    except FarslipError as exc:
        # A user's mistake: one line naming the file, record or option. FARSLIP_DEBUG=1 shows the traceback.
        if os.environ.get("FARSLIP_DEBUG"):
            raise
        print(f"farslip: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
