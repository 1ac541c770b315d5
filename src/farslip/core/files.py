"""Writing files so that an interrupted run never leaves a finished-looking partial file.

Every output is written under a temporary name in its final folder and renamed into place when complete
(``os.replace`` is atomic on one file system): a reader sees the old file or the new one, never half of one, and a
crash or SIGTERM leaves only a ``.partial`` file that no one mistakes for a result.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def partial_name(path: Path) -> Path:
    """The temporary name a file is written under: hidden, in the same folder, marked as partial."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; it replaces ``path`` only if the block succeeds.

    The temporary file keeps the final suffix's position (``.x.tif.123.partial``), so libraries that pick a driver
    from the suffix should be told the format explicitly.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding=encoding)
        else:
            tmp.write_bytes(data)
    return Path(path)
