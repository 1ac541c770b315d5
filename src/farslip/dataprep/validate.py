"""Check an MGRS JSON (``text_info.json``) against its images.

Where images are looked for: ``global_filepath`` is relative to ``global_imgs/`` in the official MGRS-200k layout
(the official training command passes ``--root-train-img-dir .../global_imgs/`` and opens
``os.path.join(root_img_dir, global_filepath)``). An explicit ``root`` is the folder ``global_filepath`` is
relative to; without one, ``<json folder>/global_imgs/<global_filepath>`` is tried first, then
``<json folder>/<global_filepath>`` (older files and other tools' files that write ``global_imgs/<name>``).

Errors (the file would break or mislead a training run):
    not a JSON list; a record without ``global_filepath`` or without any caption; an image that is missing, does
    not decode, or whose size differs from the W, H stored in its boxes; a ``bbox`` without six numbers, with its
    keys out of the x1, y1, x2, y2, W, H order, degenerate (x2 <= x1 or y2 <= y1) or outside the image; a missing
    category name; a ``category_id`` that is not an integer; one name with two ids or one id with two names.
Warnings:
    records with no objects; the same image listed twice; boxes too small for stage-2 regions (under 64 x 64 px);
    images found only relative to the JSON's folder, not to ``global_imgs/`` (the official training command then
    needs ``--root-train-img-dir`` set to the JSON's folder instead).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

IMAGE_DIR = "global_imgs"  # the folder global_filepath is relative to in the official layout
CAPTION_KEYS = ("global_caption", "detailed_caption", "brief_caption")
BBOX_ORDER = ("x1", "y1", "x2", "y2", "width", "height")
STAGE2_MIN_SIDE = 64  # FarSLIP stage 2 skips regions whose area is under 64^2 px


@dataclass
class Finding:
    level: str  # "error" or "warning"
    where: str  # "text_info.json[12].segment[3].bbox"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


@dataclass
class ValidationReport:
    path: str
    records: int = 0
    objects: int = 0
    images_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    kind: str = "mgrs"                                        # mgrs | webdataset | csv
    parts: dict[str, int] = field(default_factory=dict)       # samples per shard (webdataset)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_lines: int = 50) -> str:
        counted = {"mgrs": f"{self.records} records, {self.objects} objects",
                   "webdataset": f"{len(self.parts)} shards, {self.records} samples",
                   "csv": f"{self.records} rows"}[self.kind]
        lines = [f"{self.path}: {counted}, {self.images_checked} images checked: {len(self.errors)} errors, "
                 f"{len(self.warnings)} warnings"]
        lines += [f"  {name}: {n} samples" for name, n in list(self.parts.items())[:max_lines]]
        shown = self.errors + self.warnings
        lines += [f"  {f}" for f in shown[:max_lines]]
        if len(shown) > max_lines:
            lines.append(f"  ... and {len(shown) - max_lines} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as ``--report`` writes it."""
        out = {"path": self.path, "kind": self.kind, "records": self.records, "objects": self.objects, "ok": self.ok,
               "findings": [{"level": f.level, "where": f.where, "message": f.message} for f in self.findings]}
        if self.parts:
            out["parts"] = dict(self.parts)
        return out


def resolve_mgrs_path(path: str | Path) -> Path:
    """``path`` itself if it is a file, ``path/text_info.json`` if it is a folder."""
    p = Path(path)
    if p.is_dir():
        p = p / "text_info.json"
    if not p.is_file():
        raise FileNotFoundError(f"no MGRS JSON at {path} (expected a .json file or a folder holding "
                                "text_info.json)")
    return p


def image_roots(json_path: str | Path, root: str | Path | None = None) -> list[Path]:
    """The folders ``global_filepath`` may be relative to, in the order they are tried.

    ``root`` given: that folder only (as the official ``--root-train-img-dir``). Otherwise
    ``<json folder>/global_imgs`` (the official layout), then ``<json folder>`` (files whose paths start with
    ``global_imgs/``)."""
    if root:
        return [Path(root)]
    folder = Path(json_path).parent
    return [folder / IMAGE_DIR, folder]


def resolve_image(fp: str, roots: list[Path]) -> Path | None:
    """The first ``root / fp`` that is a file, or None."""
    for r in roots:
        if (r / fp).is_file():
            return r / fp
    return None


def load_mgrs(path: str | Path) -> list:
    p = resolve_mgrs_path(path)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def bbox_values(bbox) -> list | None:
    """The six bbox values by order (a dict's values or a list), or None when it is neither."""
    if isinstance(bbox, dict):
        return list(bbox.values())
    if isinstance(bbox, (list, tuple)):
        return list(bbox)
    return None


def validate_mgrs(path: str | Path, root: str | Path | None = None, check_images: bool = True,
                  decode: bool = True, workers: int = 8, warn_small: bool = True,
                  progress: bool = False) -> ValidationReport:
    """Validate an MGRS JSON. ``root`` is the folder ``global_filepath`` is relative to (default: the JSON's
    ``global_imgs/``, then the JSON's folder; see the module doc). ``decode=False`` reads only image headers
    (fast); ``check_images=False`` skips the images entirely."""
    p = resolve_mgrs_path(path)
    roots = image_roots(p, root)
    rep = ValidationReport(str(p))
    name = p.name

    def add(level, where, msg):
        rep.findings.append(Finding(level, where, msg))

    try:
        data = load_mgrs(p)
    except ValueError as exc:
        add("error", name, str(exc))
        return rep
    if not isinstance(data, list):
        sibling = p.parent / "text_info.json"
        hint = (f"; the records of this build are in {sibling}" if p.name != sibling.name and sibling.is_file()
                else "")  # e.g. build_report.json or categories.json handed over by mistake
        add("error", name, f"top level must be a JSON list of records, got {type(data).__name__}{hint}")
        return rep
    rep.records = len(data)
    ids_of_name: dict[str, set] = defaultdict(set)
    names_of_id: dict[int, set] = defaultdict(set)
    seen_files: dict[str, int] = {}
    image_jobs: list[tuple[int, str, set]] = []  # record index, path, {(W, H) claimed by its boxes}
    without_objects: list[int] = []
    for i, rec in enumerate(data):
        where = f"{name}[{i}]"
        if not isinstance(rec, dict):
            add("error", where, f"record must be an object, got {type(rec).__name__}")
            continue
        fp = rec.get("global_filepath")
        if not isinstance(fp, str) or not fp:
            add("error", where + ".global_filepath", "missing or not a string")
            fp = None
        elif fp in seen_files:
            add("warning", where + ".global_filepath", f"{fp!r} also in record {seen_files[fp]}")
        else:
            seen_files[fp] = i
        caps = [k for k in CAPTION_KEYS if k in rec]
        for k in caps:
            if not isinstance(rec[k], str):
                add("error", f"{where}.{k}", f"must be a string, got {type(rec[k]).__name__}")
        if not any(isinstance(rec.get(k), str) and rec[k].strip() for k in CAPTION_KEYS):
            add("error", where, f"no caption: needs one of {', '.join(CAPTION_KEYS)}")
        seg = rec.get("segment")
        if seg is None or seg == []:
            without_objects.append(i)
            seg = []
        elif not isinstance(seg, list):
            add("error", where + ".segment", f"must be a list, got {type(seg).__name__}")
            seg = []
        sizes = set()
        for j, obj in enumerate(seg):
            w = f"{where}.segment[{j}]"
            if not isinstance(obj, dict):
                add("error", w, f"object must be a dict, got {type(obj).__name__}")
                continue
            rep.objects += 1
            vals = bbox_values(obj.get("bbox"))
            if vals is None:
                add("error", w + ".bbox", "missing, or not a dict/list of six values")
            elif len(vals) != 6 or not all(_number(v) for v in vals):
                add("error", w + ".bbox", f"needs six numbers x1, y1, x2, y2, W, H; got {obj['bbox']!r}")
            else:
                if isinstance(obj["bbox"], dict):
                    keys = list(obj["bbox"].keys())
                    if set(keys) == set(BBOX_ORDER) and keys != list(BBOX_ORDER):
                        add("error", w + ".bbox", f"keys in order {keys}; readers take values by order, which "
                            f"must be {list(BBOX_ORDER)}")
                x1, y1, x2, y2, W, H = vals
                if W <= 0 or H <= 0 or W != int(W) or H != int(H):
                    add("error", w + ".bbox", f"image size W={W}, H={H} must be positive integers")
                else:
                    sizes.add((int(W), int(H)))
                if x2 <= x1 or y2 <= y1:
                    add("error", w + ".bbox", f"degenerate box x1={x1} y1={y1} x2={x2} y2={y2}")
                elif x1 < 0 or y1 < 0 or x2 > W or y2 > H:
                    add("error", w + ".bbox", f"box ({x1}, {y1}, {x2}, {y2}) is outside the {W}x{H} image")
            cat = obj.get("category")
            cid = obj.get("category_id")
            if not isinstance(cat, str) or not cat.strip():
                if not (isinstance(obj.get("cap"), str) and obj["cap"].strip()):
                    add("error", w + ".category", "missing (and no 'cap' caption instead)")
                cat = None
            if cid is not None and (isinstance(cid, bool) or not isinstance(cid, int)):
                add("error", w + ".category_id", f"must be an integer, got {cid!r}")
            elif cid is None and cat is not None:
                add("error", w + ".category_id", "missing")
            elif cat is not None:
                ids_of_name[cat].add(cid)
                names_of_id[cid].add(cat)
            if "cap" in obj and not isinstance(obj["cap"], str):
                add("error", w + ".cap", f"must be a string, got {type(obj['cap']).__name__}")
        if len(sizes) > 1:
            add("error", where + ".segment", f"boxes disagree on the image size: {sorted(sizes)}")
        if fp is not None and check_images:
            image_jobs.append((i, fp, sizes))
    for cat, ids in sorted(ids_of_name.items()):
        if len(ids) > 1:
            add("error", name, f"category {cat!r} has several ids: {sorted(ids)}")
    for cid, cats in sorted(names_of_id.items()):
        if len(cats) > 1:
            add("error", name, f"category_id {cid} is used for several names: {sorted(cats)}")
    if without_objects:
        shown = ", ".join(f"[{i}]" for i in without_objects[:5]) + (", ..." if len(without_objects) > 5 else "")
        add("warning", name, f"{len(without_objects)} records have no objects (empty or missing 'segment'): {shown}")
    if warn_small:
        small = sum(1 for rec in data if isinstance(rec, dict) and isinstance(rec.get("segment"), list)
                    for o in rec["segment"] if isinstance(o, dict) and _small(o))
        if small:
            add("warning", name, f"{small} of {rep.objects} boxes are under {STAGE2_MIN_SIDE}x{STAGE2_MIN_SIDE} px "
                "of area; FarSLIP stage 2 skips such regions unless its minimum area is lowered")
    if check_images:
        _check_images(image_jobs, roots, decode, workers, progress, rep, name)
    return rep


def _small(obj: dict) -> bool:
    vals = bbox_values(obj.get("bbox"))
    if not vals or len(vals) != 6 or not all(_number(v) for v in vals):
        return False
    return (vals[2] - vals[0]) * (vals[3] - vals[1]) < STAGE2_MIN_SIDE ** 2


def _check_images(jobs, roots: list[Path], decode: bool, workers: int, progress: bool, rep: ValidationReport,
                  name: str) -> None:
    from tqdm.auto import tqdm

    def check(job):
        i, fp, sizes = job
        path = resolve_image(fp, roots)
        if path is None:
            if len(roots) == 1:
                return i, fp, f"image {roots[0] / fp} does not exist", None
            return i, fp, f"image {fp} does not exist in {' or '.join(map(str, roots))}", None
        try:
            with Image.open(path) as im:
                size = im.size
                if decode:
                    im.load()
        except Exception as exc:  # noqa: BLE001 -- any decoder failure
            return i, fp, f"image {path} does not decode: {exc}", None
        return i, fp, None, (size, path)

    outside: list[int] = []  # records whose image is found only relative to the JSON's folder
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (i, fp, err, found), (_, _, sizes) in zip(
                tqdm(pool.map(check, jobs), total=len(jobs), desc="validate images", unit="img",
                     disable=not progress), jobs):
            rep.images_checked += 1
            where = f"{name}[{i}].global_filepath"
            if err:
                rep.findings.append(Finding("error", where, err))
                continue
            size, path = found
            if path != roots[0] / fp:
                outside.append(i)
            if sizes and size not in sizes:
                rep.findings.append(Finding("error", where, f"image is {size[0]}x{size[1]} but its boxes say "
                                            f"{' / '.join(f'{w}x{h}' for w, h in sorted(sizes))}"))
    if outside:
        shown = ", ".join(f"[{i}]" for i in outside[:5]) + (", ..." if len(outside) > 5 else "")
        rep.findings.append(Finding(
            "warning", name, f"{len(outside)} records have a global_filepath relative to the JSON's folder, not to "
            f"{IMAGE_DIR}/ as in the official layout: {shown}; the official training command then needs "
            f"--root-train-img-dir {roots[1]} (this project's reader tries both)"))
