"""Build MGRS-format data (FarSLIP stage 2) from a detection dataset.

Output, the layout of the official MGRS-200k release::

    OUT/text_info.json      a JSON list, one record per image (one line per record)
    OUT/global_imgs/*.jpg   the images (chips of the source scenes)
    OUT/categories.json     {"category name": id}
    OUT/build_report.json   options, counts and the problems met

A record::

    {"global_filepath": "P0000__0_600.jpg",                      # relative to OUT/global_imgs/
     "global_caption": "...", "detailed_caption": "...", "brief_caption": "...",
     "segment": [{"bbox": {"x1": 12, "y1": 40, "x2": 96, "y2": 130, "width": 800, "height": 800},
                  "category": "storage tank", "category_id": 14}, ...],
     "source": {"image": "P0000.png", "window": [0, 600, 800, 1400]}}

``global_filepath`` is relative to ``global_imgs/``, as in the official release: the official training command
passes ``--root-train-img-dir OUT/global_imgs/`` and opens ``os.path.join(root_img_dir, global_filepath)``.
Readers here (validate, caption) also accept files whose paths are relative to the JSON's folder
(``global_imgs/<name>``, older builds and other tools).

``bbox`` holds six values in this order: the box in pixels of the written image, then the image's width and
height (readers take them by order). Category ids are stable: the official vocabulary of the format (or a COCO
file's ``categories``), normalised and sorted, numbered from 0, then names met outside it; ``--categories``
fixes the table.

The build is resumable: every source image, once its chips are written, is appended to
``OUT/.farslip_build/journal.jsonl``; a second run with the same options skips what is there. Captions are made
at the end (the MLLM captioner's own on-disk cache makes that step resumable too).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import FarslipError
from .captions import MLLMCaptioner, TemplateCaptioner
from .chips import (chip_boxes, clip_polygon, convex_hull, image_size, load_rgb, objects_in_box,
                    polygon_area)
from .detection import FORMATS, LabelFileError, SourceImage, read_label_file, scan_dataset
from .names import CategoryMap, assign_category_ids, load_category_ids
from ..core.problems import Problem, summarize_problems
from .validate import IMAGE_DIR, image_roots, resolve_image

JSON_NAME = "text_info.json"
STATE_DIR = ".farslip_build"
BBOX_KEYS = ("x1", "y1", "x2", "y2", "width", "height")
MAX_REPORTED_PROBLEMS = 2000


class BuildError(FarslipError, RuntimeError):
    """The build cannot start or go on (bad options, an output folder that belongs to another build)."""


@dataclass
class BuildConfig:
    """Everything that decides the content of a build (``out`` aside). See ``farslip data build --help``."""

    format: str
    images: str
    labels: str
    out: str
    chip_size: int = 800
    overlap: int = 200
    min_visibility: float = 0.7
    min_box_size: float = 2.0
    drop_difficult: bool = False
    keep_empty: bool = False
    image_format: str = "jpg"
    jpeg_quality: int = 95
    category_map: str | None = None
    no_default_map: bool = False
    categories: str | None = None
    captioner: str = "template"  # or "mllm"
    limit: int | None = None

    def check(self) -> None:
        if self.format not in FORMATS:
            raise BuildError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.chip_size < 0:
            raise BuildError("--chip-size must be >= 0 (0: do not cut)")
        if self.chip_size and not 0 <= self.overlap < self.chip_size:
            raise BuildError(f"--overlap must be in [0, chip size {self.chip_size}), got {self.overlap}")
        if not 0.0 < self.min_visibility <= 1.0:
            raise BuildError(f"--min-visibility must be in (0, 1], got {self.min_visibility}")
        if self.image_format not in ("jpg", "png"):
            raise BuildError(f"--image-format must be jpg or png, got {self.image_format!r}")
        if self.captioner not in ("template", "mllm"):
            raise BuildError(f"captioner must be 'template' or 'mllm', got {self.captioner!r}")

    def fingerprint(self) -> dict:
        """The options a resumed build must share with the run it continues."""
        keys = ("format", "chip_size", "overlap", "min_visibility", "min_box_size", "drop_difficult",
                "keep_empty", "image_format", "jpeg_quality", "category_map", "no_default_map")
        d = {k: getattr(self, k) for k in keys}
        d["images"] = str(Path(self.images).resolve())
        d["labels"] = str(Path(self.labels).resolve())
        return d


# ------------------------------------------------------------------------------------------------ records

def mgrs_bbox(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> dict:
    """The ``bbox`` dict of an MGRS object: six values in the order x1, y1, x2, y2, W, H."""
    return dict(zip(BBOX_KEYS, (x1, y1, x2, y2, int(width), int(height))))


def mgrs_record(filepath: str, captions: dict[str, str], objects: list[dict], width: int, height: int,
                **extra) -> dict:
    """One MGRS record. ``objects``: dicts with ``category``, ``category_id``, ``box`` (x1, y1, x2, y2) and
    optionally ``cap``."""
    segment = []
    for o in objects:
        seg = {"bbox": mgrs_bbox(*o["box"][:4], width, height), "category": o["category"],
               "category_id": int(o["category_id"])}
        if o.get("cap"):
            seg["cap"] = o["cap"]
        segment.append(seg)
    rec = {"global_filepath": filepath, "global_caption": captions["global_caption"],
           "detailed_caption": captions["detailed_caption"], "brief_caption": captions["brief_caption"],
           "segment": segment}
    rec.update(extra)
    return rec


def image_relpath(file: str) -> str:
    """A chip file relative to OUT (``global_imgs/<name>``, as the journal keeps it) as a ``global_filepath``:
    relative to ``global_imgs/``, the official layout (sub-folders below ``global_imgs/`` are kept)."""
    prefix = IMAGE_DIR + "/"
    return file[len(prefix):] if file.startswith(prefix) else file


def write_mgrs_json(records: list[dict], path: str | Path) -> None:
    """Write records as a JSON list, one record per line, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[\n")
        for i, r in enumerate(records):
            f.write(json.dumps(r, ensure_ascii=False))
            f.write(",\n" if i < len(records) - 1 else "\n")
        f.write("]\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ per image

def process_source(item: SourceImage, cfg: BuildConfig, cmap: CategoryMap) -> dict:
    """Read one source image's labels, cut it into chips, write the chips that hold objects.

    Returns a journal entry: ``key``, ``records`` (chip file, size, objects in chip pixels, source window,
    meta), ``counts`` and ``problems``; ``failed`` is True when the image or its label file could not be read
    (such an image is tried again on resume)."""
    counts: Counter = Counter()
    problems: list[Problem] = []
    entry = {"key": item.key, "records": [], "counts": counts, "problems": problems, "failed": False}
    meta = dict(item.meta)
    if item.objects is None:
        try:
            lf = read_label_file(cfg.format, item.label_path)
        except (LabelFileError, OSError) as exc:
            problems.append(Problem("bad-file", str(item.label_path), str(exc)))
            counts["bad_files"] += 1
            entry["failed"] = True
            return _finish(entry)
        objects = lf.objects
        problems.extend(lf.problems)
        meta.update(lf.meta)
    else:
        objects = item.objects
    counts["bad_records"] += sum(p.kind == "bad-record" for p in problems)
    try:
        W, H = image_size(item.image_path)
    except Exception as exc:  # noqa: BLE001 -- any decoder error means: unreadable image
        problems.append(Problem("bad-image", str(item.image_path), f"cannot read image header ({exc})"))
        counts["bad_images"] += 1
        entry["failed"] = True
        return _finish(entry)
    for k, v in (("width", W), ("height", H)):
        if isinstance(meta.get(k), int) and meta[k] != v:
            problems.append(Problem("size-mismatch", str(item.label_path or item.image_path),
                                    f"labels say {k} {meta[k]}, the image has {v}; using the image", field=k))
    label_src = str(item.label_path or item.image_path)
    prepared = []
    for o in objects:
        counts["objects_read"] += 1
        name = cmap(o.category)
        if name is None:
            counts["dropped_category"] += 1
            continue
        if o.difficult and cfg.drop_difficult:
            counts["dropped_difficult"] += 1
            continue
        poly = [] if o.inverted else clip_polygon(convex_hull(o.polygon), (0, 0, W, H))
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        if (len(poly) < 3 or polygon_area(poly) <= 0 or max(xs) - min(xs) < cfg.min_box_size
                or max(ys) - min(ys) < cfg.min_box_size):
            counts["dropped_degenerate"] += 1
            x1, y1, x2, y2 = o.bounds if not o.is_box else (*o.polygon[0], *o.polygon[2])
            problems.append(Problem("degenerate", label_src, f"{o.category!r} box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) "
                                    f"is inverted, empty or thinner than {cfg.min_box_size:g} px inside the "
                                    f"{W}x{H} image; dropped", o.record))
            continue
        prepared.append((name, o.category, poly, bool(o.difficult)))
    image = None
    out_dir = Path(cfg.out) / IMAGE_DIR
    boxes = chip_boxes(W, H, cfg.chip_size, cfg.overlap)
    for win in boxes:
        objs, c = objects_in_box(prepared, win, cfg.min_visibility, cfg.min_box_size)
        counts["cut_at_chip_border"] += c["cut"]
        counts["too_small_in_chip"] += c["too_small"]
        if not objs and not cfg.keep_empty:
            counts["empty_chips_skipped"] += 1
            continue
        if image is None:
            try:
                image = load_rgb(item.image_path)
            except Exception as exc:  # noqa: BLE001
                problems.append(Problem("bad-image", str(item.image_path), f"cannot decode image ({exc})"))
                counts["bad_images"] += 1
                entry["failed"] = True
                entry["records"] = []
                return _finish(entry)
        name = (f"{item.key}.{cfg.image_format}" if len(boxes) == 1
                else f"{item.key}__{win[0]}_{win[1]}.{cfg.image_format}")
        chip = image if win == (0, 0, W, H) else image.crop(win)
        _save_image(chip, out_dir / name, cfg)
        entry["records"].append({
            # "file" is relative to OUT (old journals resume); global_filepath is image_relpath(file)
            "file": f"{IMAGE_DIR}/{name}", "width": win[2] - win[0], "height": win[3] - win[1],
            "objects": [{"category": o.category, "raw": o.raw_category, "box": list(o.box),
                         "difficult": o.difficult} for o in objs],
            "source": {"image": item.image_path.name, "window": list(win)},
            "meta": {k: v for k, v in meta.items() if k in ("gsd", "imagesource") and v is not None},
        })
        counts["chips"] += 1
        counts["objects_kept"] += len(objs)
    counts["source_images"] += 1
    return _finish(entry)


def _finish(entry: dict) -> dict:
    entry["counts"] = {k: v for k, v in entry["counts"].items() if v}
    entry["problems"] = [p.to_dict() for p in entry["problems"]]
    return entry


def _save_image(im, path: Path, cfg: BuildConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if cfg.image_format == "jpg":
        im.save(tmp, format="JPEG", quality=cfg.jpeg_quality)
    else:
        im.save(tmp, format="PNG")
    os.replace(tmp, path)


def _process_star(args):
    return process_source(*args)


# ------------------------------------------------------------------------------------------------ the build

def _prepare_out(cfg: BuildConfig, overwrite: bool) -> tuple[Path, dict[str, dict]]:
    out = Path(cfg.out)
    state = out / STATE_DIR
    if overwrite:
        for p in (out / IMAGE_DIR, state):
            if p.exists():
                shutil.rmtree(p)
        for name in (JSON_NAME, "categories.json", "build_report.json"):
            (out / name).unlink(missing_ok=True)
    fp = cfg.fingerprint()
    done: dict[str, dict] = {}
    if (state / "config.json").is_file():
        old = json.loads((state / "config.json").read_text(encoding="utf-8"))
        diff = {k: (old.get(k), v) for k, v in fp.items() if old.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise BuildError(f"{out} holds a build made with other options ({what}); pass --overwrite to start "
                             f"again or choose another --out")
        journal = state / "journal.jsonl"
        if journal.is_file():
            with open(journal, encoding="utf-8") as f:
                for line in f:
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # the line being written when a run was killed
                    if not e.get("failed"):
                        done[e["key"]] = e
    else:
        if (out / JSON_NAME).exists() or (out / IMAGE_DIR).exists():
            raise BuildError(f"{out} already holds {JSON_NAME} or {IMAGE_DIR}/ from another tool; pass --overwrite "
                             "to replace them or choose another --out")
        state.mkdir(parents=True, exist_ok=True)
        _write_json(state / "config.json", fp)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    return out, done


def _refuse_out_over_inputs(cfg: BuildConfig) -> None:
    """The build writes OUT/global_imgs/, OUT/.farslip_build/ and a few JSON files, and deletes chips no journal
    accounts for: none of that may hold an input, and OUT may not lie inside --images (a second run would read
    its own chips as source images)."""
    out = Path(cfg.out).resolve()
    written = [out / IMAGE_DIR, out / STATE_DIR] + [out / n for n in (JSON_NAME, "categories.json",
                                                                       "build_report.json")]
    inputs = {"--images": cfg.images, "--labels": cfg.labels, "--category-map": cfg.category_map,
              "--categories": cfg.categories}
    for option, value in inputs.items():
        if not value:
            continue
        src = Path(value).resolve()
        for w in written:
            if src == w or w in src.parents or (option == "--images" and src in w.parents):
                raise BuildError(f"{option} {value} is where the build writes its outputs ({w}); choose an --out "
                                 "outside the dataset")


def build_mgrs(cfg: BuildConfig, workers: int = 0, overwrite: bool = False, progress: bool = True,
               mllm: MLLMCaptioner | None = None, caption_workers: int = 4) -> dict:
    """Build ``cfg.out`` from a detection dataset; return the summary (also written to build_report.json).

    ``workers`` > 1 cuts images in that many processes. ``mllm``: caption with this captioner instead of the
    template one (images it fails on get template captions and a ``caption-failed`` problem)."""
    from tqdm.auto import tqdm

    cfg.check()
    _refuse_out_over_inputs(cfg)
    if cfg.captioner == "mllm" and mllm is None:
        raise BuildError("captioner 'mllm' needs an MLLMCaptioner (CLI: --mllm-url and --mllm-model)")
    cmap = CategoryMap.from_file(cfg.category_map, not cfg.no_default_map) if cfg.category_map else \
        CategoryMap(use_default=not cfg.no_default_map)
    fixed_ids = load_category_ids(cfg.categories) if cfg.categories else None
    scan = scan_dataset(cfg.format, cfg.images, cfg.labels)
    items = scan.items[: cfg.limit] if cfg.limit else scan.items
    out, done = _prepare_out(cfg, overwrite)
    todo = [it for it in items if it.key not in done]
    resumed = len(items) - len(todo)
    jpath = out / STATE_DIR / "journal.jsonl"
    if jpath.is_file() and jpath.stat().st_size:
        with open(jpath, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    else:
        torn = False
    journal = open(jpath, "a", encoding="utf-8")
    if torn:  # a run killed mid-line: start the next entry on a line of its own
        journal.write("\n")
    entries = dict(done)
    bar = tqdm(total=len(items), initial=resumed, desc=f"build {cfg.format}", unit="img", disable=not progress)
    try:
        def record(entry: dict) -> None:
            journal.write(json.dumps(entry, ensure_ascii=False) + "\n")
            journal.flush()
            entries[entry["key"]] = entry
            bar.update(1)

        if workers and workers > 1 and len(todo) > 1:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(_process_star, (it, cfg, cmap)) for it in todo]
                for fut in as_completed(futures):
                    record(fut.result())
        else:
            for it in todo:
                record(process_source(it, cfg, cmap))
    finally:
        bar.close()
        journal.close()

    # ---- assemble, in source order, so the result does not depend on workers or on resumes
    counts: Counter = Counter()
    problems = list(scan.problems)
    chips = []
    for it in items:
        e = entries.get(it.key)
        if e is None:
            continue
        counts.update(e["counts"])
        problems.extend(Problem.from_dict(p) for p in e["problems"])
        chips.extend(e["records"])
    vocab = cmap.vocabulary(scan.vocabulary)
    seen = sorted({o["category"] for c in chips for o in c["objects"]})
    if fixed_ids is not None:
        for name in seen:
            if name not in fixed_ids:
                problems.append(Problem("unknown-category", str(cfg.categories), f"{name!r} is not in the category "
                                        "table; given the next free id"))
        ids = assign_category_ids(seen, fixed_ids)
    else:
        ids = assign_category_ids(set(vocab) | set(seen))

    template = TemplateCaptioner()
    for c in chips:
        c["global_filepath"] = image_relpath(c["file"])
        for o in c["objects"]:
            o["category_id"] = ids[o["category"]]
    # captions are keyed by global_filepath, as `farslip data caption` keys them: recaptioning gives the same text
    if mllm is not None:
        jobs = [{"image_path": out / c["file"], "objects": c["objects"], "width": c["width"],
                 "height": c["height"], "key": c["global_filepath"]} for c in chips]
        caps, failures = mllm.caption_many(jobs, workers=caption_workers, progress=progress, fallback=template)
        for i, msg in failures:
            problems.append(Problem("caption-failed", str(out / chips[i]["file"]), msg + "; template captions used"))
        counts["caption_failed"] += len(failures)
    else:
        caps = [template(c["objects"], c["width"], c["height"], gsd=c["meta"].get("gsd"), key=c["global_filepath"])
                for c in chips]
    records = [mgrs_record(c["global_filepath"], cap, c["objects"], c["width"], c["height"], source=c["source"])
               for c, cap in zip(chips, caps)]
    write_mgrs_json(records, out / JSON_NAME)
    _write_json(out / "categories.json", ids)

    # Chips no journal entry accounts for (left by a killed run, or by an image that failed this time) go;
    # chips of journaled images outside this run's --limit stay, so a later run can still use them.
    used = {r["file"].split("/", 1)[1] for e in entries.values() if not e.get("failed") for r in e["records"]}
    for p in (out / IMAGE_DIR).iterdir():
        if p.is_file() and p.name not in used:
            p.unlink()
    per_cat = Counter(o["category"] for c in chips for o in c["objects"])
    summary = {
        "out": str(out), "json": str(out / JSON_NAME), "format": cfg.format,
        "source_images": len(items), "resumed": resumed, "images_written": len(records),
        "objects": sum(len(r["segment"]) for r in records), "categories": len(ids),
        "objects_per_category": dict(per_cat.most_common()),
        "counts": dict(sorted(counts.items())), "problems": summarize_problems(problems),
    }
    report = {"summary": summary, "config": asdict(cfg),
              "problems": [p.to_dict() for p in problems[:MAX_REPORTED_PROBLEMS]],
              "problems_left_out": max(0, len(problems) - MAX_REPORTED_PROBLEMS)}
    _write_json(out / "build_report.json", report)
    summary["problem_list"] = problems
    return summary


def format_summary(summary: dict, max_problems: int = 10) -> str:
    """Human-readable end-of-build summary."""
    c = summary["counts"]
    lines = [
        f"built {summary['json']}",
        f"  source images   {summary['source_images']} ({summary['resumed']} done by an earlier run)",
        f"  images written  {summary['images_written']}",
        f"  objects         {summary['objects']} in {len(summary['objects_per_category'])} categories "
        f"(table of {summary['categories']} in categories.json)",
        f"  objects read {c.get('objects_read', 0)}, degenerate dropped {c.get('dropped_degenerate', 0)}, "
        f"difficult dropped {c.get('dropped_difficult', 0)}, category dropped {c.get('dropped_category', 0)}",
        f"  at chip borders: {c.get('cut_at_chip_border', 0)} object parts under the visibility threshold, "
        f"{c.get('too_small_in_chip', 0)} too thin; {c.get('empty_chips_skipped', 0)} empty chips skipped",
    ]
    if summary["problems"]:
        lines.append("  problems: " + ", ".join(f"{k} {v}" for k, v in summary["problems"].items())
                     + " (all in build_report.json)")
        for p in summary.get("problem_list", [])[:max_problems]:
            lines.append(f"    {p}")
    return "\n".join(lines)


def recaption_mgrs(path: str | Path, out: str | Path | None = None, mllm: MLLMCaptioner | None = None,
                   root: str | Path | None = None, workers: int = 4, progress: bool = True) -> dict:
    """Recompute the captions of an existing MGRS JSON (template captions, or ``mllm``'s) from its objects.

    Writes ``out`` (default: the file itself, replaced atomically); other fields are kept. A record's
    ``scene`` field, when present, is given to the captioner. ``root`` is the folder ``global_filepath`` is
    relative to (default: the JSON's ``global_imgs/``, then the JSON's folder). Returns counts and the caption
    failures."""
    from .validate import bbox_values, load_mgrs, resolve_mgrs_path

    src = resolve_mgrs_path(path)
    roots = image_roots(src, root)
    records = load_mgrs(src)
    if not isinstance(records, list):
        raise BuildError(f"{src}: top level is not a list of records")
    jobs = []
    for i, rec in enumerate(records):
        fp = rec.get("global_filepath") if isinstance(rec, dict) else None
        if not isinstance(fp, str) or not fp:
            raise BuildError(f"{src}[{i}]: no global_filepath")
        image = resolve_image(fp, roots)
        objs, size = [], None
        for o in rec.get("segment") or []:
            v = bbox_values(o.get("bbox"))
            if v and len(v) == 6:
                objs.append({"category": o.get("category") or o.get("cap") or "object", "box": v[:4]})
                size = (int(v[4]), int(v[5]))
        if size is None:
            try:
                if image is None:
                    raise FileNotFoundError(f"{fp} not found in {' or '.join(map(str, roots))}")
                size = image_size(image)
            except Exception as exc:  # noqa: BLE001
                raise BuildError(f"{src}[{i}]: no boxes to read the image size from, and the image cannot be "
                                 f"read ({exc})") from exc
        jobs.append({"image_path": image if image is not None else roots[0] / fp, "objects": objs,
                     "width": size[0], "height": size[1], "scene": rec.get("scene"), "key": fp})
    template = TemplateCaptioner()
    failures: list = []
    if mllm is not None:
        caps, failures = mllm.caption_many(jobs, workers=workers, progress=progress, fallback=template)
    else:
        caps = [template(j["objects"], j["width"], j["height"], scene=j["scene"], key=j["key"]) for j in jobs]
    for rec, cap in zip(records, caps):
        rec.update(cap)
    dst = Path(out) if out else src
    write_mgrs_json(records, dst)
    return {"json": str(dst), "records": len(records), "caption_failed": len(failures),
            "failures": [(jobs[i]["key"], msg) for i, msg in failures]}
