"""The benchmarks' peak memory of a command is the command's own, not its parent's."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import run_measured  # noqa: E402


def test_child_peak_is_not_the_parents():
    held = np.ones(400 << 20, np.uint8)  # this process: at least 400 MiB resident when the child is forked
    r = run_measured([sys.executable, "-c", "import sys"], threads=1)
    assert held.sum() and r["child_peak_rss_mib"] < 100
