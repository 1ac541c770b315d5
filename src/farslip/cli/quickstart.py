"""``farslip quickstart``: the whole method on a synthetic world on this CPU, once or once per seed."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    from .. import quickstart  # light: its parts load when the command runs

    p = sub.add_parser("quickstart", help="run the whole method on a synthetic world on this CPU (no download)",
                       description=quickstart.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (default: runs/quickstart)")
    p.add_argument("--size", choices=sorted(quickstart.SIZES), default="full",
                   help="full (about 5 minutes on 2 CPU cores) or tiny (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run once per seed into OUT/seed-N and write OUT/seeds.md, each metric's mean and spread "
                        "(default OUT: runs/quickstart-seeds); docs/quickstart.md records seeds 0 1 2")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..quickstart import run_quickstart, run_seeds

    if args.seeds:
        run_seeds(args.out or "runs/quickstart-seeds", args.seeds, args.size)
    else:
        run_quickstart(args.out or "runs/quickstart", args.size, args.seed)
    return 0
