"""Raw training records from the formats RS people have: MGRS JSON and image-caption CSV (shards: ``shards.py``).

A record says where the image is and what the text is; ``views.py`` turns it into tensors. Problems are raised
as :class:`~farslip.core.problems.BadInput` naming the file, the record and the field, so a loader can skip, count and report them.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..core.errors import FarslipError
from ..core.problems import BadInput


class TrainDataError(FarslipError, ValueError):
    """Training data that cannot be read as given (the file, shard or option is named); one line on the CLI."""


def bad_record(source: str, key: str | None, field_name: str, reason: str) -> BadInput:
    """The error a reader raises for a record it cannot use (the loader skips, counts and reports it)."""
    return BadInput.of("bad-record", source, reason, key, field_name)


@dataclass
class RegionObject:
    """An object of an MGRS record: a box in pixels of the original image and its category (or caption)."""

    box: tuple[float, float, float, float]
    category: str | None
    category_id: int
    caption: str | None = None  # a free-text region caption (the official label is then -1)


@dataclass
class Record:
    source: str                         # the annotation file or shard the record comes from
    key: str                            # where in it: "record 12", "row 3", "sample 000042"
    caption: str
    path: str | None = None             # image file, or
    image_bytes: bytes | None = None    # encoded image (webdataset)
    objects: list[RegionObject] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)  # object-level problems (Problem dicts): counted, not fatal

    @property
    def where(self) -> str:
        return f"{self.source} {self.key}"


def open_rgb(record: Record) -> Image.Image:
    """Decode the record's image once, as RGB (grayscale and palette images are converted)."""
    try:
        if record.image_bytes is not None:
            img = Image.open(io.BytesIO(record.image_bytes))
        else:
            if not record.path or not os.path.isfile(record.path):
                raise bad_record(record.source, record.key, "image", f"image file not found: {record.path}")
            img = Image.open(record.path)
        img.load()
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        what = record.path or f"({len(record.image_bytes)} encoded bytes)"
        # PIL names an in-memory stream by its repr ("<_io.BytesIO object at 0x...>"), which tells a user nothing
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        raise bad_record(record.source, record.key, "image", f"cannot decode image {what}: {reason}") from exc
    return img.convert("RGB") if img.mode != "RGB" else img


# ----------------------------------------------------------------------------------------------------------------
# MGRS-200k JSON (official release layout: text_info.json + global_imgs/)

CAPTION_CHOICES = {
    # The official loader (open_clip_train/data.py, JsonDataset.__getitem__, at HEAD) reads global_caption,
    # falling back to detailed_caption; its first commit (425df12) fell back to brief_caption instead.
    "official": ("global_caption", "detailed_caption"),
    "official_first_commit": ("global_caption", "brief_caption"),
    "global": ("global_caption", "detailed_caption", "brief_caption"),
    "detailed": ("detailed_caption", "global_caption", "brief_caption"),
    "brief": ("brief_caption", "global_caption", "detailed_caption"),
}


def read_bbox(bbox: Any, source: str, key: str | None = None) -> tuple[list[float], tuple[float, float] | None]:
    """Box ``x1 y1 x2 y2`` and, when present, the image size ``(W, H)``, read by order (keys vary in the wild)."""
    values = list(bbox.values()) if isinstance(bbox, dict) else list(bbox) if isinstance(bbox, (list, tuple)) else None
    if values is None or len(values) < 4:
        raise bad_record(source, key, "bbox", f"expected 4 or 6 numbers, got {bbox!r}")
    try:
        nums = [float(v) for v in values[:6]]
    except (TypeError, ValueError):
        raise bad_record(source, key, "bbox", f"non-numeric value in {bbox!r}") from None
    if not all(math.isfinite(v) for v in nums):
        raise bad_record(source, key, "bbox", f"non-finite value in {bbox!r}")
    return nums[:4], (nums[4], nums[5]) if len(nums) >= 6 else None


class MGRSRecords:
    """The MGRS JSON list. ``image_root`` defaults to the JSON's folder (``global_imgs/`` is tried too)."""

    def __init__(self, json_path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 caption: str = "official"):
        self.json_path = Path(json_path)
        if caption not in CAPTION_CHOICES:
            raise TrainDataError(f"caption must be one of {sorted(CAPTION_CHOICES)}, got {caption!r}")
        try:
            items = json.loads(self.json_path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"MGRS annotation file not found: {self.json_path}") from None
        except json.JSONDecodeError as exc:
            raise TrainDataError(f"{self.json_path}: not valid JSON ({exc})") from exc
        if not isinstance(items, list):
            raise TrainDataError(f"{self.json_path}: expected a JSON list of records, found {type(items).__name__}")
        self.items = items
        self.category_ids = self._category_ids(items)
        self.roots = [Path(image_root)] if image_root else [self.json_path.parent, self.json_path.parent / "global_imgs"]
        self.caption_keys = CAPTION_CHOICES[caption]

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _category_ids(items: list) -> dict[str, int]:
        """Category name -> id: the ids the file gives, and fresh ids (sorted by name) for names that have none."""
        given: dict[str, int] = {}
        names: set[str] = set()
        for item in items:
            for seg in (item.get("segment") or []) if isinstance(item, dict) else []:
                if isinstance(seg, dict) and seg.get("category"):
                    name = str(seg["category"])
                    names.add(name)
                    try:
                        given.setdefault(name, int(seg["category_id"]))
                    except (KeyError, TypeError, ValueError):
                        pass
        next_id = max(given.values(), default=-1) + 1
        for name in sorted(names - set(given)):
            given[name], next_id = next_id, next_id + 1
        return given

    def _resolve(self, rel: str, key: str) -> str:
        for root in self.roots:
            if (root / rel).is_file():
                return str(root / rel)
        raise bad_record(str(self.json_path), key, "global_filepath", f"image {rel!r} not found under {' or '.join(map(str, self.roots))}")

    def __getitem__(self, i: int) -> Record:
        item = self.items[i]
        src, key = str(self.json_path), f"record {i}"
        if not isinstance(item, dict):
            raise bad_record(src, key, "record", f"expected an object, got {type(item).__name__}")
        rel = item.get("global_filepath")
        if not rel:
            raise bad_record(src, key, "global_filepath", "missing")
        caption = next((item[k] for k in self.caption_keys if isinstance(item.get(k), str) and item[k].strip()), None)
        if caption is None:
            raise bad_record(src, key, "caption", f"none of {', '.join(self.caption_keys)} present")
        record = Record(src, key, caption.strip(), path=self._resolve(rel, key))
        for j, seg in enumerate(item.get("segment") or []):
            okey = f"{key} object {j}"
            try:
                if not isinstance(seg, dict) or "bbox" not in seg:
                    raise bad_record(src, okey, "bbox", "missing")
                box, _ = read_bbox(seg["bbox"], src, okey)
                cap = seg.get("cap") if isinstance(seg.get("cap"), str) and seg.get("cap").strip() else None
                category = seg.get("category")
                if not category and not cap:
                    raise bad_record(src, okey, "category", "neither a category nor a caption")
                if cap:  # as the official loader: an object with a caption is known by it (label -1), category or not
                    record.objects.append(RegionObject(tuple(box), None, -1, cap))
                else:
                    record.objects.append(RegionObject(tuple(box), str(category), self.category_ids[str(category)]))
            except BadInput as exc:
                record.notes.append(exc.problem.to_dict())
        return record


# ----------------------------------------------------------------------------------------------------------------
# Image-caption CSV (SkyScript style)

class CaptionCSVRecords:
    def __init__(self, csv_path: str | os.PathLike, root: str | os.PathLike | None = None, image_key: str = "filepath",
                 caption_key: str = "title", sep: str = ","):
        self.csv_path = Path(csv_path)
        self.root = Path(root) if root else self.csv_path.parent
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            missing = {image_key, caption_key} - set(reader.fieldnames or [])
            if missing:
                raise TrainDataError(f"{self.csv_path}: missing column(s) {sorted(missing)}; has {reader.fieldnames}")
            self.rows = [(r[image_key], r[caption_key]) for r in reader]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Record:
        path, caption = self.rows[i]
        key = f"row {i + 2}"  # +2: header line and 1-based lines
        if not caption or not caption.strip():
            raise bad_record(str(self.csv_path), key, "caption", "empty")
        return Record(str(self.csv_path), key, caption.strip(), path=str(self.root / path))
