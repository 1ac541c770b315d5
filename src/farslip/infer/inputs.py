"""What the inference commands take as inputs: paths, glob patterns, text files of paths (``@list.txt`` or
``--inputs-from``) and STAC ItemCollections (a local JSON file; the asset chosen by ``--stac-asset``).

    expand_inputs(["scenes/*.tif", "@more.txt", "items.json"], stac_asset="visual")

Every entry becomes one or more existing local files, in the order given (a glob's matches sorted), each once. A
list file holds one path a line (blank lines and ``#`` comments skipped), relative to the list's folder unless
absolute. A STAC Item or ItemCollection (``"type": "Feature"`` / ``"FeatureCollection"`` with ``assets``) gives
each item's asset ``stac_asset`` (default: the first of ``visual``, ``image``, ``data``), its ``href`` relative to
the JSON file's folder unless absolute.
"""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Iterable

from ..core.errors import FarslipError

#: Asset keys tried, in order, when no ``stac_asset`` is given (Element84/Planetary Computer naming).
DEFAULT_STAC_ASSETS = ("visual", "image", "data")
_GLOB_CHARS = set("*?[")


class InputError(FarslipError):
    """An input that names nothing usable: one line naming the entry and what is wrong with it."""


def expand_inputs(entries: Iterable[str | Path], *, inputs_from: str | Path | None = None,
                  stac_asset: str | None = None, json_is_stac: bool = True) -> list[Path]:
    """The files ``entries`` (and the list file ``inputs_from``) name, each once, in order."""
    out: list[Path] = []
    items = [str(e) for e in entries] + ([f"@{inputs_from}"] if inputs_from else [])
    for item in items:
        out += _expand_one(item, stac_asset, json_is_stac)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise InputError("no input files given")
    return unique


def _expand_one(item: str, stac_asset: str | None, json_is_stac: bool) -> list[Path]:
    if item.startswith("@"):
        return read_list(Path(item[1:]), stac_asset)
    if _GLOB_CHARS & set(item) and not Path(item).exists():
        matches = sorted(glob.glob(item, recursive=True))
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise InputError(f"{item}: the pattern matches no file")
        return files
    path = Path(item)
    if not path.exists():
        raise InputError(f"{item}: no such file")
    if json_is_stac and path.suffix.lower() == ".json" and path.is_file():
        return stac_assets(path, stac_asset)
    return [path]


def listing_files(entries: Iterable[str | Path], inputs_from: str | Path | None = None) -> list[Path]:
    """The files that name inputs rather than being ones -- ``@list.txt`` files, ``--inputs-from``, STAC JSON
    files -- so that no output is written over them either."""
    items = [str(e) for e in entries] + ([f"@{inputs_from}"] if inputs_from else [])
    return [Path(i[1:]) if i.startswith("@") else Path(i) for i in items
            if i.startswith("@") or (i.lower().endswith(".json") and Path(i).is_file())]


def names_input(entry: str) -> bool:
    """Whether a command-line word names input files (a file, ``@list``, a glob that matches) rather than being a
    query (``farslip locate`` mixes both)."""
    if entry.startswith("@"):
        return True
    if Path(entry).is_file():
        return True
    return bool(_GLOB_CHARS & set(entry)) and any(Path(m).is_file() for m in glob.glob(entry, recursive=True))


def read_list(path: Path, stac_asset: str | None = None) -> list[Path]:
    """The files a text file names, one a line; entries may themselves be globs or STAC files."""
    if not path.is_file():
        raise InputError(f"{path}: list file not found")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        full = entry if Path(entry).is_absolute() else str(path.parent / entry)
        try:
            out += _expand_one(full, stac_asset, True)
        except InputError as exc:
            raise InputError(f"{path}: line {n}: {exc}") from None
    return out


def stac_assets(path: Path, key: str | None = None) -> list[Path]:
    """The local files of asset ``key`` of every item of a STAC Item or ItemCollection JSON file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("type") not in ("Feature", "FeatureCollection"):
        raise InputError(f"{path}: not a STAC Item or ItemCollection (no \"type\": \"Feature\"/\"FeatureCollection\")")
    features = [doc] if doc["type"] == "Feature" else doc.get("features", [])
    out = []
    for i, item in enumerate(features):
        where = f"{path}: item {item.get('id', i)!r}"
        assets = item.get("assets")
        if not isinstance(assets, dict) or not assets:
            raise InputError(f"{where}: no assets")
        name = key or next((k for k in DEFAULT_STAC_ASSETS if k in assets), None)
        if name is None or name not in assets:
            raise InputError(f"{where}: no asset {key or ' / '.join(DEFAULT_STAC_ASSETS)!r} "
                             f"(it has {', '.join(sorted(assets))}; choose one with --stac-asset)")
        href = str(assets[name].get("href", ""))
        if "://" in href and not href.startswith("file://"):
            raise InputError(f"{where}: asset {name!r} is remote ({href}); download it first (farslip reads "
                             "local files)")
        local = Path(href[len("file://"):] if href.startswith("file://") else href)
        local = local if local.is_absolute() else path.parent / local
        if not local.is_file():
            raise InputError(f"{where}: asset {name!r} file not found: {local}")
        out.append(local)
    if not out:
        raise InputError(f"{path}: the ItemCollection has no items")
    return out
