"""Readers for remote-sensing detection datasets: DOTA, DIOR, FAIR1M and COCO JSON.

Every reader returns objects as polygons in the pixel coordinates of the source image (an axis-aligned box is
a 4-point polygon), with the *raw* category name as the file spells it; normalisation happens later
(:mod:`farslip.dataprep.names`). Readers never raise on a bad record: they skip it and return a
:class:`~farslip.dataprep.problems.Problem` naming the file, the record and the field. A file that cannot be read
at all raises :class:`LabelFileError`, which the dataset scanner turns into a problem as well.

Source layouts (what ``--images`` and ``--labels`` point at)
------------------------------------------------------------
DOTA v1.0/1.5/2.0
    ``images/P0000.png`` and ``labelTxt/P0000.txt``. A label file may start with header lines
    ``imagesource:GoogleEarth`` and ``gsd:0.146`` (or ``gsd:null``); then one object per line:
    ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` (the difficult flag may be missing).
DIOR / DIOR-R
    ``JPEGImages-trainval/00001.jpg`` and ``Annotations/Horizontal Bounding Boxes/00001.xml`` (Pascal-VOC:
    ``object/name``, ``object/difficult``, ``object/bndbox/{xmin,ymin,xmax,ymax}``). DIOR-R's oriented boxes
    (``object/robndbox/{x_left_top,y_left_top,...}``) and roLabelImg's (``cx,cy,w,h,angle``) are read too.
FAIR1M 1.0/2.0
    ``images/0.tif`` and ``labelXml/0.xml``: ``objects/object/possibleresult/name`` and
    ``objects/object/points/point`` (``"x,y"`` strings, the first point repeated at the end).
COCO JSON (iSAID, xView conversions, most others)
    one JSON file with ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``image_id``,
    ``category_id``, ``bbox`` [x, y, w, h] and/or ``segmentation`` polygons or RLE, ``iscrowd``) and
    ``categories`` (``id``, ``name``); ``file_name`` is relative to ``--images``. ``iscrowd`` or ``ignore``
    objects count as difficult.
"""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..core.errors import FarslipError
from ..core.problems import Problem

FORMATS = ("dota", "dior", "fair1m", "coco")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
LABEL_EXTENSIONS = {"dota": (".txt",), "dior": (".xml",), "fair1m": (".xml",), "coco": (".json",)}


class LabelFileError(FarslipError, ValueError):
    """A label file that cannot be read at all (not UTF-8, not XML/JSON, wrong root)."""


@dataclass
class DetObject:
    """One annotated object: a polygon (list of (x, y) in source-image pixels) and its raw category."""

    category: str
    polygon: list[tuple[float, float]]
    difficult: bool = False
    record: str = ""  # where it was read from, for messages ("line 4", "object 2", "annotation id 17")
    is_box: bool = False  # an axis-aligned box as the file gave it (x1, y1), (x2, y1), (x2, y2), (x1, y2)

    @property
    def inverted(self) -> bool:
        """A box whose max corner is not beyond its min corner (e.g. VOC xmax < xmin, COCO w <= 0)."""
        if not self.is_box:
            return False
        (x1, y1), (x2, y2) = self.polygon[0], self.polygon[2]
        return x2 <= x1 or y2 <= y1

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        xs = [p[0] for p in self.polygon]
        ys = [p[1] for p in self.polygon]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class LabelFile:
    """What a per-image label file holds."""

    objects: list[DetObject] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # imagesource, gsd, filename, width, height when the file says
    problems: list[Problem] = field(default_factory=list)


@dataclass
class SourceImage:
    """One image of the source dataset, paired with its labels (``label_path`` or pre-read ``objects``)."""

    key: str  # unique name, used for output file names and for resume
    image_path: Path
    label_path: Path | None = None
    objects: list[DetObject] | None = None  # COCO: read up front from the one JSON file
    meta: dict = field(default_factory=dict)


def box_polygon(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def _finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------------- DOTA

def read_dota(path: str | Path) -> LabelFile:
    """Read one DOTA ``labelTxt`` file (v1.0, v1.5 or v2.0)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not a UTF-8 text file ({exc})") from exc
    out = LabelFile()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        tokens = line.split()
        if ":" in tokens[0] and not _is_number(tokens[0].split(":")[0]):
            key, _, value = line.partition(":")
            key, value = key.strip().lower(), value.strip()
            if key == "gsd":
                try:
                    out.meta["gsd"] = float(value)
                except ValueError:
                    out.meta["gsd"] = None  # 'gsd:null' appears in the release
            else:
                out.meta[key] = value
            continue
        rec = f"line {lineno}"
        if len(tokens) not in (9, 10):
            out.problems.append(Problem("bad-record", str(path), f"expected 8 coordinates, a category and an "
                                        f"optional difficult flag, got {len(tokens)} fields", rec))
            continue
        try:
            coords = [float(t) for t in tokens[:8]]
        except ValueError:
            bad = next(i for i, t in enumerate(tokens[:8]) if not _is_number(t))
            out.problems.append(Problem("bad-record", str(path), f"coordinate {tokens[bad]!r} is not a number",
                                        rec, f"{'xy'[bad % 2]}{bad // 2 + 1}"))
            continue
        if not _finite(coords):
            out.problems.append(Problem("bad-record", str(path), "coordinate is not finite", rec))
            continue
        if _is_number(tokens[8]):  # 'x1 y1 ... y4 0': the category is missing and the flag took its place
            out.problems.append(Problem("bad-record", str(path), f"category is missing (field 9 is the number "
                                        f"{tokens[8]!r}; expected 8 coordinates, a category, an optional difficult "
                                        "flag)", rec, "category"))
            continue
        difficult = False
        if len(tokens) == 10:
            if tokens[9] not in ("0", "1"):
                out.problems.append(Problem("bad-record", str(path), f"difficult flag must be 0 or 1, got "
                                            f"{tokens[9]!r}", rec, "difficult"))
                continue
            difficult = tokens[9] == "1"
        poly = [(coords[i], coords[i + 1]) for i in range(0, 8, 2)]
        out.objects.append(DetObject(tokens[8], poly, difficult, rec))
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------- XML

def _parse_xml(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LabelFileError(f"{path}: not well-formed XML ({exc})") from exc
    if root.tag != "annotation":
        raise LabelFileError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    return root


def _xml_number(elem: ET.Element | None, path: Path, rec: str, name: str, problems: list[Problem]):
    if elem is None or elem.text is None or not elem.text.strip():
        problems.append(Problem("bad-record", str(path), f"<{name}> is missing", rec, name))
        return None
    try:
        v = float(elem.text.strip())
    except ValueError:
        problems.append(Problem("bad-record", str(path), f"<{name}> is {elem.text.strip()!r}, not a number",
                                rec, name))
        return None
    if not math.isfinite(v):
        problems.append(Problem("bad-record", str(path), f"<{name}> is not finite", rec, name))
        return None
    return v


def _xml_size(root: ET.Element, path: Path, out: LabelFile) -> None:
    size = root.find("size")
    if size is None:
        return
    for key in ("width", "height"):
        e = size.find(key)
        if e is not None and e.text and e.text.strip():
            try:
                out.meta[key] = int(float(e.text))
            except ValueError:
                out.problems.append(Problem("bad-record", str(path), f"<size/{key}> is {e.text!r}", "size", key))


_DIOR_R_KEYS = ("x_left_top", "y_left_top", "x_right_top", "y_right_top",
                "x_right_bottom", "y_right_bottom", "x_left_bottom", "y_left_bottom")


def read_voc(path: str | Path) -> LabelFile:
    """Read one Pascal-VOC XML file (DIOR horizontal boxes; DIOR-R and roLabelImg oriented boxes)."""
    path = Path(path)
    root = _parse_xml(path)
    out = LabelFile()
    fn = root.findtext("filename")
    if fn:
        out.meta["filename"] = fn.strip()
    _xml_size(root, path, out)
    for i, obj in enumerate(root.findall("object"), 1):
        rec = f"object {i}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            out.problems.append(Problem("bad-record", str(path), "object has no <name>", rec, "name"))
            continue
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "", "false", "False")
        n_before = len(out.problems)
        if obj.find("bndbox") is not None:
            bb = obj.find("bndbox")
            v = [_xml_number(bb.find(k), path, rec, f"bndbox/{k}", out.problems)
                 for k in ("xmin", "ymin", "xmax", "ymax")]
            if len(out.problems) > n_before:
                continue
            out.objects.append(DetObject(name, box_polygon(*v), difficult, rec, is_box=True))
            continue
        elif obj.find("robndbox") is not None:
            rb = obj.find("robndbox")
            if rb.find("x_left_top") is not None:  # DIOR-R: four corners
                v = [_xml_number(rb.find(k), path, rec, f"robndbox/{k}", out.problems) for k in _DIOR_R_KEYS]
                if len(out.problems) > n_before:
                    continue
                poly = [(v[j], v[j + 1]) for j in range(0, 8, 2)]
            else:  # roLabelImg: centre, size, angle (radians)
                v = [_xml_number(rb.find(k), path, rec, f"robndbox/{k}", out.problems)
                     for k in ("cx", "cy", "w", "h", "angle")]
                if len(out.problems) > n_before:
                    continue
                poly = rotated_box_polygon(*v)
        else:
            out.problems.append(Problem("bad-record", str(path), "object has neither <bndbox> nor <robndbox>",
                                        rec, "bndbox"))
            continue
        out.objects.append(DetObject(name, poly, difficult, rec))
    return out


def rotated_box_polygon(cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a ``w`` x ``h`` box centred at (cx, cy), rotated by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


read_dior = read_voc


def read_fair1m(path: str | Path) -> LabelFile:
    """Read one FAIR1M XML file (polygons under ``objects/object/points``)."""
    path = Path(path)
    root = _parse_xml(path)
    out = LabelFile()
    fn = root.findtext("source/filename") or root.findtext("filename")
    if fn:
        out.meta["filename"] = fn.strip()
    origin = root.findtext("source/origin")
    if origin:
        out.meta["imagesource"] = origin.strip()
    _xml_size(root, path, out)
    objects = root.find("objects")
    for i, obj in enumerate(objects.findall("object") if objects is not None else [], 1):
        rec = f"object {i}"
        name = (obj.findtext("possibleresult/name") or obj.findtext("name") or "").strip()
        if not name:
            out.problems.append(Problem("bad-record", str(path), "object has no <possibleresult/name>", rec,
                                        "possibleresult/name"))
            continue
        pts = []
        bad = False
        for j, p in enumerate(obj.findall("points/point"), 1):
            try:
                x, y = (float(t) for t in (p.text or "").split(","))
                if not _finite((x, y)):
                    raise ValueError
            except ValueError:
                out.problems.append(Problem("bad-record", str(path),
                                            f"point {j} is {p.text!r}, expected two numbers 'x,y'", rec,
                                            "points/point"))
                bad = True
                break
            pts.append((x, y))
        if bad:
            continue
        if len(pts) > 1 and pts[0] == pts[-1]:
            pts = pts[:-1]
        if len(pts) < 3:
            out.problems.append(Problem("bad-record", str(path), f"polygon has {len(pts)} distinct points, needs 3",
                                        rec, "points"))
            continue
        out.objects.append(DetObject(name, pts, False, rec))
    return out


# ---------------------------------------------------------------------------------------------------- COCO

@dataclass
class CocoDataset:
    images: list[dict]  # each: id, file_name, width, height, objects (list[DetObject])
    categories: dict[int, str]
    problems: list[Problem]


def read_coco(path: str | Path) -> CocoDataset:
    """Read a COCO-style detection JSON (boxes, polygons or RLE masks)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"{path}: not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not UTF-8 ({exc})") from exc
    if not isinstance(data, dict):
        raise LabelFileError(f"{path}: expected a JSON object with images/annotations/categories, got "
                             f"{type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise LabelFileError(f"{path}: top-level '{key}' list is missing")
    problems: list[Problem] = []
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            problems.append(Problem("bad-record", str(path), "category needs 'id' and 'name'", f"categories[{i}]"))
            continue
        cats[c["id"]] = str(c["name"]).strip()
    images: dict = {}
    for i, im in enumerate(data["images"]):
        rec = f"images[{i}]"
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            problems.append(Problem("bad-record", str(path), "image needs 'id' and 'file_name'", rec))
            continue
        if im["id"] in images:
            problems.append(Problem("bad-record", str(path), f"duplicate image id {im['id']!r}", rec, "id"))
            continue
        images[im["id"]] = {"id": im["id"], "file_name": str(im["file_name"]), "width": im.get("width"),
                            "height": im.get("height"), "objects": []}
    for i, ann in enumerate(data["annotations"]):
        rec = f"annotation id {ann.get('id', i)}" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict):
            problems.append(Problem("bad-record", str(path), "annotation is not an object", rec))
            continue
        missing = [k for k in ("image_id", "category_id") if k not in ann]
        if missing:
            problems.append(Problem("bad-record", str(path), f"annotation has no {' or '.join(map(repr, missing))}",
                                    rec, missing[0]))
            continue
        im = images.get(ann.get("image_id"))
        if im is None:
            problems.append(Problem("bad-record", str(path), f"image_id {ann.get('image_id')!r} is not in images",
                                    rec, "image_id"))
            continue
        name = cats.get(ann.get("category_id"))
        if name is None:
            problems.append(Problem("unknown-category", str(path), f"category_id {ann.get('category_id')!r} is not "
                                    "in categories", rec, "category_id"))
            continue
        poly, err, fld = _coco_geometry(ann)
        if poly is None:
            problems.append(Problem("bad-record", str(path), err, rec, fld))
            continue
        difficult = bool(ann.get("iscrowd", 0)) or bool(ann.get("ignore", 0))
        im["objects"].append(DetObject(name, poly, difficult, rec, is_box=fld == "bbox"))
    return CocoDataset(list(images.values()), cats, problems)


def _coco_geometry(ann: dict):
    """Polygon for a COCO annotation: its single polygon if it has one, else its bbox, else the bounds of a
    multi-part polygon or an RLE mask. Returns (polygon, error, field); on success field is "bbox" when the
    polygon is the annotation's bbox."""
    seg = ann.get("segmentation")
    polys = []
    if isinstance(seg, list) and seg:
        parts = seg if isinstance(seg[0], (list, tuple)) else [seg]
        for part in parts:
            if not isinstance(part, (list, tuple)) or len(part) < 6 or len(part) % 2:
                return None, "segmentation polygon needs an even number (>= 6) of coordinates", "segmentation"
            try:
                pts = [(float(part[j]), float(part[j + 1])) for j in range(0, len(part), 2)]
            except (TypeError, ValueError):
                return None, "segmentation polygon has a non-numeric coordinate", "segmentation"
            polys.append(pts)
    if len(polys) == 1:
        return polys[0], None, None
    bbox = ann.get("bbox")
    if bbox is not None:
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            return None, f"bbox must be [x, y, w, h], got {bbox!r}", "bbox"
        if not _finite((x, y, w, h)):
            return None, "bbox is not finite", "bbox"
        return box_polygon(x, y, x + w, y + h), None, "bbox"
    if polys:
        xs = [p[0] for poly in polys for p in poly]
        ys = [p[1] for poly in polys for p in poly]
        return box_polygon(min(xs), min(ys), max(xs), max(ys)), None, None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        try:
            b = rle_bounds(seg)
        except (ValueError, TypeError) as exc:
            return None, f"bad RLE mask ({exc})", "segmentation"
        if b is None:
            return None, "RLE mask is empty", "segmentation"
        return box_polygon(*b), None, None
    return None, "annotation has neither bbox nor segmentation", "bbox"


def rle_counts(counts) -> list[int]:
    """Run lengths of a COCO RLE: a list as is, or the compressed string form decoded."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise ValueError("truncated compressed RLE string")
            c = ord(counts[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_bounds(rle: dict) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) of the foreground of a COCO RLE mask (column-major runs, starting with background)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle_counts(rle["counts"])
    pos = 0
    x1 = y1 = math.inf
    x2 = y2 = -math.inf
    for i, n in enumerate(counts):
        if n < 0:
            raise ValueError("negative run length")
        if i % 2 == 1 and n > 0:
            a, b = pos, pos + n - 1
            ca, cb = a // h, b // h
            x1, x2 = min(x1, ca), max(x2, cb)
            if ca == cb:
                y1, y2 = min(y1, a % h), max(y2, b % h)
            else:
                y1, y2 = 0, h - 1
        pos += n
    if pos > h * w:
        raise ValueError(f"runs cover {pos} pixels, mask has {h * w}")
    if x2 < 0:
        return None
    return int(x1), int(y1), int(x2) + 1, int(y2) + 1


# ---------------------------------------------------------------------------------------------------- pairing

READERS = {"dota": read_dota, "dior": read_voc, "fair1m": read_fair1m}


def read_label_file(fmt: str, path: str | Path) -> LabelFile:
    """Read one per-image label file of ``fmt``."""
    if fmt not in READERS:
        raise ValueError(f"no per-image reader for format {fmt!r}; choose one of {sorted(READERS)}")
    return READERS[fmt](path)


def _index_images(images_dir: Path) -> tuple[dict[str, Path], dict[str, Path], list[Problem]]:
    """Images under ``images_dir`` by relative path (without suffix) and by stem."""
    by_rel: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    problems: list[Problem] = []
    for p in sorted(images_dir.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        rel = p.relative_to(images_dir).with_suffix("").as_posix()
        if rel in by_rel:
            problems.append(Problem("ambiguous-image", str(p), f"another image with the same name is used: "
                                    f"{by_rel[rel]}"))
            continue
        by_rel[rel] = p
        by_stem.setdefault(p.stem, p)
    return by_rel, by_stem, problems


@dataclass
class ScanResult:
    items: list[SourceImage]  # image-label pairs, sorted by key
    problems: list[Problem]  # labels without an image, images without labels, bad COCO records
    vocabulary: list[str]  # raw category names the dataset is known to use (official list / COCO categories)


def scan_dataset(fmt: str, images: str | Path, labels: str | Path) -> ScanResult:
    """Pair images with labels: by relative path, else by file stem (COCO: by ``file_name``). Labels without an
    image are reported as ``missing-image``, images without labels as ``missing-label``; neither is fatal.
    A COCO file that cannot be read at all raises :class:`LabelFileError`."""
    from .names import FORMAT_CLASSES

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    images, labels = Path(images), Path(labels)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {images} does not exist")
    if not labels.exists():
        raise FileNotFoundError(f"labels {labels} do not exist")
    by_rel, by_stem, problems = _index_images(images)
    used: set[Path] = set()
    items: list[SourceImage] = []
    vocabulary = list(FORMAT_CLASSES.get(fmt, ()))
    if fmt == "coco":
        if not labels.is_file():
            raise FileNotFoundError(f"COCO labels must be one JSON file, {labels} is a folder")
        ds = read_coco(labels)  # LabelFileError propagates: nothing can be built without it
        problems.extend(ds.problems)
        vocabulary = list(ds.categories.values())
        keys: set[str] = set()
        for im in ds.images:
            rel = Path(im["file_name"])
            path = images / rel
            if not path.is_file():
                path = by_rel.get(rel.with_suffix("").as_posix()) or by_stem.get(rel.stem)
            if path is None or not Path(path).is_file():
                problems.append(Problem("missing-image", str(labels), f"image {im['file_name']!r} not found under "
                                        f"{images}", f"image id {im['id']}", "file_name"))
                continue
            used.add(Path(path))
            key = _unique_key(rel.with_suffix("").as_posix().replace("/", "_"), keys)
            meta = {k: im[k] for k in ("width", "height") if isinstance(im.get(k), int)}
            items.append(SourceImage(key, Path(path), labels, im["objects"], meta))
    else:
        exts = LABEL_EXTENSIONS[fmt]
        files = [labels] if labels.is_file() else sorted(p for p in labels.rglob("*")
                                                         if p.suffix.lower() in exts and p.is_file())
        if not files:
            raise FileNotFoundError(f"no {'/'.join(exts)} label files under {labels}")
        keys = set()
        base = labels.parent if labels.is_file() else labels
        for lp in files:
            rel = lp.relative_to(base).with_suffix("").as_posix()
            path = by_rel.get(rel) or by_stem.get(lp.stem)
            if path is None:
                problems.append(Problem("missing-image", str(lp), f"no image named {lp.stem}.* under {images}"))
                continue
            used.add(path)
            items.append(SourceImage(_unique_key(rel.replace("/", "_"), keys), path, lp))
    for p in by_rel.values():
        if p not in used:
            problems.append(Problem("missing-label", str(p), "image has no label file" if fmt != "coco"
                                    else f"image is not listed in {labels}"))
    items.sort(key=lambda s: s.key)
    return ScanResult(items, problems, vocabulary)


def _unique_key(key: str, seen: set[str]) -> str:
    k, n = key, 1
    while k in seen:
        n += 1
        k = f"{key}-{n}"
    seen.add(k)
    return k
