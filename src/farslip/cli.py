"""The ``farslip`` command. Each room of the package registers its own sub-commands (``add_commands``)."""
from __future__ import annotations

import argparse
import importlib
import sys

# Rooms that contribute sub-commands, in the order --help lists them. Each module defines
# ``add_commands(subparsers)`` and sets ``func`` on its parsers.
COMMAND_MODULES = (
    "farslip.build.commands",     # farslip data build|validate|stats|synth
    "farslip.train.commands",     # farslip train
    "farslip.eval.commands",      # farslip eval classification|retrieval|ovss|all
    "farslip.infer.commands",     # farslip segment|classify|search
    "farslip.quickstart",         # farslip quickstart
    "farslip.models.commands",    # farslip model info|convert
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
