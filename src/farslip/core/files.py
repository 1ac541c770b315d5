"""Writing files so that an interrupted run never leaves a finished-looking partial file.

Every output is written under a temporary name in its final folder and renamed into place when complete
(``os.replace`` is atomic on one file system): a reader sees the old file or the new one, never half of one, and a
crash or SIGTERM leaves only a ``.partial`` file that no one mistakes for a result.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import UsageError


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


class StagedFiles:
    """Files that are finished together or not at all (a map, its preview, polygons, web page and summary).

        with StagedFiles() as stage:
            write_map(stage(out / "x.tif")); write_preview(stage(out / "x.tif"), stage(out / "x.png"))

    ``stage(path)`` is where ``path`` is written meanwhile: a file of the same name in a hidden folder beside it
    (``.farslip-stage.<pid>/``), so readers of the staged files and libraries that choose a format by the suffix
    see the final name. When the block succeeds every staged file is moved into place (``os.replace``: an
    earlier file there is kept until that moment); when it fails -- an error, SIGTERM, Ctrl-C -- every staged file
    is removed and the earlier files stay as they were."""

    def __init__(self):
        self.files: dict[Path, Path] = {}   # final path -> staged path, in the order they were asked for

    def __call__(self, path: str | os.PathLike) -> Path:
        final = Path(path)
        if final not in self.files:
            folder = final.parent / f".farslip-stage.{os.getpid()}"
            folder.mkdir(parents=True, exist_ok=True)
            self.files[final] = folder / final.name
        return self.files[final]

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for final, staged in self.files.items():
                    if staged.exists():
                        os.replace(staged, final)
        finally:
            for folder in {staged.parent for staged in self.files.values()}:
                for left in folder.glob("*"):
                    left.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once resolved, or the same inode (hard links, bind mounts)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: not the same file
        return False


def refuse_overwriting_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike],
                              hint: str = "choose another --out") -> None:
    """Raise :class:`UsageError` when any output would be written over an input (resolved path or same inode),
    or when two outputs are one file; ``hint`` says how the user avoids it."""
    inputs = [Path(p) for p in inputs]
    seen: dict[Path, Path] = {}
    for out in (Path(p) for p in outputs):
        for src in inputs:
            if same_file(out, src):
                raise UsageError(f"{out}: would be written over the input {src}; {hint}")
        key = out.resolve()
        if key in seen:
            raise UsageError(f"{out}: two outputs would be written to one file; {hint}")
        seen[key] = out


def distinct_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """An output stem per input, predictable and distinct: the file's stem where no other input shares it;
    otherwise its path below the inputs' common folder with ``/`` as ``_`` (``a/x.tif``, ``b/x.tif`` -> ``a_x``,
    ``b_x``), and the suffix appended when that is still not enough (``x.png``, ``x.tif`` -> ``x_png``, ``x_tif``)."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    clash = {s for s in stems if stems.count(s) > 1}
    if not clash:
        return stems
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    out = []
    for p, r in zip(paths, resolved):
        if p.stem not in clash:
            out.append(p.stem)
            continue
        rel = r.relative_to(root)
        out.append("_".join(rel.parent.parts + (rel.stem,)))
    again = {s for s in out if out.count(s) > 1}
    return [f"{s}_{p.suffix.lstrip('.').lower()}" if s in again and p.suffix else s for s, p in zip(out, paths)]
