"""Pieces shared by the three evaluations: results, loaders, progress, bad records."""
from __future__ import annotations

import os

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.problems import Problem


class EvalResult(dict):
    """A plain dict of the documented metrics, plus ``.info`` (counts, skipped records, timings, settings)."""

    def __init__(self, *args, info: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.info = info or {}


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int | None, collate_fn=None,
                pin: bool = False) -> DataLoader:
    workers = default_workers() if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=pin, persistent_workers=False)


def progress(iterable, *, total=None, desc: str | None = None, enabled: bool = True, unit: str = "it"):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True, leave=False)


def split_bad(batch: list) -> tuple[list, list[Problem]]:
    good = [b for b in batch if not isinstance(b, Problem)]
    bad = [b for b in batch if isinstance(b, Problem)]
    return good, bad


# ----------------------------------------------------------------------------------------------------------------
# Text embeddings


