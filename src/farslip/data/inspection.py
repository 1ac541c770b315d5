"""``farslip data validate|stats`` for every training format: MGRS JSON (``dataprep.validate`` / ``stats``),
webdataset shards and image-caption CSVs -- read as the trainer reads them (the same member keys, the same
caption choice, the same decoder), so what passes here trains.

Shards -- errors: a tar that cannot be read to its end; a sample without an image member (``img_content``,
``jpg``, ``png``, ...), whose image does not decode, or without a caption (``caption``, ``txt``, ``text``) or
with an empty one. Warnings: a caption that is not UTF-8 (the trainer reads it with replacement characters), a
key met twice in a shard (webdataset groups members by consecutive keys, so the second is another sample), a
shard without samples. CSVs -- errors: a missing column, a row without an image path or caption, an image that
is missing or does not decode. Warnings: the same image and caption twice.

Reports keep MGRS's form (:class:`~farslip.dataprep.validate.ValidationReport`): counts, then one finding a line
naming the file and the sample or row; shards add their sample counts.
"""
from __future__ import annotations

import csv
import glob
import io
import os
import statistics
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..core.problems import BadInput
from ..dataprep.stats import format_stats, mgrs_stats
from ..dataprep.validate import Finding, ValidationReport, resolve_mgrs_path, validate_mgrs
from .records import Record, open_rgb
from .shards import IMAGE_KEYS, TEXT_KEYS, expand_shards, shard_samples

KINDS = ("mgrs", "webdataset", "csv")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def detect_kind(path: str) -> str:
    """The format of ``path``: shard specs (braces, globs, ``::``, ``.tar``) and folders of tars are webdataset;
    ``.csv`` / ``.tsv`` files are CSV; anything else (a ``.json``, a folder with ``text_info.json``) is MGRS."""
    text = str(path)
    if "{" in text or "::" in text or glob.has_magic(text) or text.endswith(SHARD_SUFFIXES):
        return "webdataset"
    p = Path(text)
    if p.is_dir() and not (p / "text_info.json").is_file() and any(p.glob("*.tar")):
        return "webdataset"
    if p.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    return "mgrs"


def shard_list(spec: str) -> list[str]:
    """The shards of a spec, or of a folder (its ``*.tar``, sorted); FileNotFoundError when none exists."""
    if Path(spec).is_dir():
        shards = sorted(str(p) for suffix in SHARD_SUFFIXES for p in Path(spec).glob(f"*{suffix}"))
    else:
        shards = expand_shards(spec)
    missing = [s for s in shards if not os.path.isfile(s)]
    if not shards or missing:
        raise FileNotFoundError(f"{spec}: {'no shard found' if not shards else f'{missing[0]} not found'} "
                                f"({len(shards) - len(missing)} of {len(shards)} shards exist)")
    return shards


def default_sep(path: str | Path) -> str:
    return "\t" if str(path).lower().endswith(".tsv") else ","


# -- validate ---------------------------------------------------------------------------------------------------

def validate_data(path: str, kind: str | None = None, *, root: str | None = None, image_key: str = "filepath",
                  caption_key: str = "title", sep: str | None = None, decode: bool = True, check_images: bool = True,
                  workers: int = 8, progress: bool = False) -> ValidationReport:
    """Validate training data of any format (``kind`` None: :func:`detect_kind`)."""
    kind = kind or detect_kind(path)
    if kind == "mgrs":
        return validate_mgrs(path, root=root, check_images=check_images, decode=decode, workers=workers,
                             progress=progress)
    if kind == "webdataset":
        return validate_shards(path, decode=decode, workers=workers)
    if kind == "csv":
        return validate_csv(path, root=root, image_key=image_key, caption_key=caption_key,
                            sep=sep or default_sep(path), decode=decode, check_images=check_images, workers=workers)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def validate_shards(spec: str, decode: bool = True, workers: int = 8) -> ValidationReport:
    shards = shard_list(spec)
    rep = ValidationReport(str(spec), kind="webdataset")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for url, (count, checked, findings) in zip(shards, pool.map(lambda u: _check_shard(u, decode), shards)):
            rep.parts[Path(url).name] = count
            rep.records += count
            rep.images_checked += checked
            rep.findings += findings
    return rep


def _check_shard(url: str, decode: bool) -> tuple[int, int, list[Finding]]:
    name, findings, seen, count, checked = Path(url).name, [], set(), 0, 0
    try:
        for key, members in shard_samples(url):
            count += 1
            where = f"{name}[{key}]"
            if key in seen:
                findings.append(Finding("warning", where, "key met before in this shard: its members make another "
                                                          "sample (webdataset groups consecutive members by key)"))
            seen.add(key)
            image = next((members[k] for k in IMAGE_KEYS if k in members), None)
            text = next((members[k] for k in TEXT_KEYS if k in members), None)
            if image is None:
                findings.append(Finding("error", where, f"no image member (looked for {', '.join(IMAGE_KEYS)}; has "
                                                        f"{', '.join(sorted(members)) or 'none'})"))
            elif decode:
                checked += 1
                problem = _decode_problem(Record(url, f"sample {key}", "", image_bytes=image))
                if problem:
                    findings.append(Finding("error", where, problem))
            if text is None:
                findings.append(Finding("error", where, f"no caption member (looked for {', '.join(TEXT_KEYS)})"))
                continue
            try:
                caption = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                findings.append(Finding("warning", where, f"caption is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                                          "the trainer reads it with replacement characters"))
                caption = text.decode("utf-8", errors="replace")
            if not caption.strip():
                findings.append(Finding("error", where, "empty caption"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        findings.append(Finding("error", name, f"unreadable tar after {count} samples: {exc}"))
    if count == 0 and not findings:
        findings.append(Finding("warning", name, "no samples"))
    return count, checked, findings


def _decode_problem(record: Record) -> str | None:
    """Why the trainer could not decode this record's image (None: it can)."""
    try:
        open_rgb(record)
    except BadInput as exc:
        return exc.problem.message
    return None


def validate_csv(path: str | Path, root: str | Path | None = None, image_key: str = "filepath",
                 caption_key: str = "title", sep: str = ",", decode: bool = True, check_images: bool = True,
                 workers: int = 8) -> ValidationReport:
    path = Path(path)
    rep = ValidationReport(str(path), kind="csv")
    rows = _read_csv(path, sep, rep)
    if rows is None:
        return rep
    header = rows.fieldnames or []
    for key in (image_key, caption_key):
        if key not in header:
            rep.findings.append(Finding("error", path.name, f"no column {key!r} (separator {sep!r}); columns: "
                                                            f"{header}"))
    if rep.errors:
        return rep
    base = Path(root) if root else path.parent
    images, seen = [], Counter()
    for line, row in enumerate(rows, start=2):
        rep.records += 1
        where = f"{path.name}:{line}"
        image, caption = row.get(image_key), row.get(caption_key)
        if None in row:
            rep.findings.append(Finding("error", where, f"{len(header) + len(row[None])} fields, the header has "
                                                        f"{len(header)} (separator {sep!r})"))
        if not image:
            rep.findings.append(Finding("error", where, f"no image path in {image_key!r}"))
        if caption is None or not caption.strip():
            rep.findings.append(Finding("error", where, f"empty caption in {caption_key!r}"))
        if image and caption:
            seen[(image, caption.strip())] += 1
            if seen[(image, caption.strip())] == 2:
                rep.findings.append(Finding("warning", where, f"{image} with the same caption again"))
        if image and check_images:
            images.append((where, base / image))
    if check_images:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for where, problem in pool.map(lambda job: (job[0], _image_problem(job[1], decode)), images):
                rep.images_checked += 1
                if problem:
                    rep.findings.append(Finding("error", where, problem))
    return rep


def _read_csv(path: Path, sep: str, rep: ValidationReport):
    if not path.is_file():
        raise FileNotFoundError(f"no CSV at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        rep.findings.append(Finding("error", path.name, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        return None
    if len(sep) != 1:
        rep.findings.append(Finding("error", path.name, f"the separator is one character, got {sep!r}"))
        return None
    return csv.DictReader(io.StringIO(text, newline=""), delimiter=sep)


def _image_problem(path: Path, decode: bool) -> str | None:
    if not path.is_file():
        return f"image {path} does not exist"
    if not decode:
        return None
    return _decode_problem(Record(str(path), "", "", path=str(path)))


# -- stats ------------------------------------------------------------------------------------------------------

def data_stats(path: str, kind: str | None = None, *, root: str | None = None, image_key: str = "filepath",
               caption_key: str = "title", sep: str | None = None) -> dict:
    """Counts of training data of any format (``kind`` None: :func:`detect_kind`); ``stats["kind"]`` says which."""
    kind = kind or detect_kind(path)
    if kind == "mgrs":
        return {"kind": "mgrs", **mgrs_stats(resolve_mgrs_path(path))}
    if kind == "webdataset":
        return shard_stats(path)
    if kind == "csv":
        return csv_stats(path, root=root, image_key=image_key, caption_key=caption_key, sep=sep or default_sep(path))
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def shard_stats(spec: str) -> dict:
    """Samples per shard, member keys, image formats and sizes (from headers), caption lengths."""
    per_shard, keys, sizes, words, unreadable = {}, Counter(), Counter(), [], []
    for url in shard_list(spec):
        n = 0
        try:
            for _, members in shard_samples(url):
                n += 1
                keys.update(members.keys())
                image = next((members[k] for k in IMAGE_KEYS if k in members), None)
                text = next((members[k] for k in TEXT_KEYS if k in members), None)
                if image is not None:
                    sizes[_size(io.BytesIO(image))] += 1
                if text is not None:
                    words.append(len(text.decode("utf-8", errors="replace").split()))
        except (tarfile.TarError, OSError, EOFError):
            unreadable.append(Path(url).name)
        per_shard[Path(url).name] = n
    return {"kind": "webdataset", "path": str(spec), "shards": len(per_shard), "samples": sum(per_shard.values()),
            "samples_per_shard": per_shard, "member_keys": dict(keys.most_common()),
            "image_sizes": _sizes(sizes), "caption_words": _words(words), "unreadable_shards": unreadable}


def csv_stats(path: str | Path, root: str | Path | None = None, image_key: str = "filepath",
              caption_key: str = "title", sep: str = ",") -> dict:
    """Rows, distinct images, captions per image, image sizes (from headers), caption lengths."""
    path = Path(path)
    rep = ValidationReport(str(path), kind="csv")
    rows = _read_csv(path, sep, rep)
    if rows is None or image_key not in (rows.fieldnames or []) or caption_key not in (rows.fieldnames or []):
        raise ValueError(f"{path}: not a CSV with columns {image_key!r} and {caption_key!r} (separator {sep!r})")
    base = Path(root) if root else path.parent
    per_image, sizes, words, missing = Counter(), Counter(), [], 0
    for row in rows:
        image, caption = row.get(image_key) or "", row.get(caption_key) or ""
        per_image[image] += 1
        words.append(len(caption.split()))
    for image in per_image:
        if (base / image).is_file():
            sizes[_size(base / image)] += 1
        else:
            missing += 1
    counts = list(per_image.values())
    return {"kind": "csv", "path": str(path), "rows": sum(counts), "images": len(per_image),
            "missing_images": missing,
            "captions_per_image": {"mean": statistics.fmean(counts) if counts else 0.0, "max": max(counts, default=0)},
            "image_sizes": _sizes(sizes), "caption_words": _words(words)}


def _size(source) -> str:
    try:
        with Image.open(source) as im:
            return f"{im.width}x{im.height} {im.format}"
    except Exception:  # noqa: BLE001 -- any image the header reader cannot read
        return "unreadable"


def _sizes(sizes: Counter) -> dict[str, int]:
    return dict(sizes.most_common())


def _words(words: list[int]) -> dict:
    return {"mean": statistics.fmean(words) if words else 0.0, "max": max(words, default=0),
            "empty": sum(1 for w in words if w == 0)}


def format_data_stats(st: dict, top: int = 40) -> str:
    """Plain-text tables of :func:`data_stats` (MGRS: ``dataprep.stats.format_stats``)."""
    if st["kind"] == "mgrs":
        return format_stats({k: v for k, v in st.items() if k != "kind"}, top=top)
    words, sizes = st["caption_words"], list(st["image_sizes"].items())
    if st["kind"] == "webdataset":
        lines = [f"shards                 {st['shards']}", f"samples                {st['samples']}"]
    else:
        cpi = st["captions_per_image"]
        lines = [f"rows                   {st['rows']}", f"images                 {st['images']}"
                 f" ({st['missing_images']} missing)",
                 f"captions per image     mean {cpi['mean']:.2f}  max {cpi['max']}"]
    lines.append(f"caption words          mean {words['mean']:.1f}  max {words['max']}  empty {words['empty']}")
    lines.append("image sizes            " + ", ".join(f"{k} ({v})" for k, v in sizes[:5])
                 + (f", ... {len(sizes) - 5} more" if len(sizes) > 5 else ""))
    if st["kind"] == "webdataset":
        lines.append("member keys            " + ", ".join(f"{k} ({v})" for k, v in st["member_keys"].items()))
        width = max([len("shard")] + [len(n) for n in st["samples_per_shard"]])
        lines += ["", f"{'shard':<{width}}  {'samples':>8}"]
        lines += [f"{name:<{width}}  {n:>8}" for name, n in list(st["samples_per_shard"].items())[:top]]
        if len(st["samples_per_shard"]) > top:
            lines.append(f"... {len(st['samples_per_shard']) - top} more shards")
        if st["unreadable_shards"]:
            lines.append(f"unreadable (counted up to the damage): {', '.join(st['unreadable_shards'])}")
    return "\n".join(lines)
