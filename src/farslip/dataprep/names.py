"""Category-name normalisation: dataset spellings -> plain words.

Detection datasets spell the same category in many ways (``storage-tank`` in DOTA, ``storagetank`` in DIOR,
``storage_tank`` in iSAID, ``Storage Tank`` in xView). FarSLIP's region texts are "a satellite image of
{category}", so the names must be plain English words a text encoder understands, and the same object must get
the same name whichever dataset it came from.

Lookup is by a *squashed key*: the name lower-cased with everything but letters and digits removed, so every
spelling of one name hits the same map entry. Names the map does not know are cleaned generically
(camelCase split, ``_``/``-`` to spaces, ``w/`` to "with", ``/`` to "or").

The default map covers the vocabularies of DOTA v1.0-2.0, DIOR, FAIR1M and iSAID and merges a few synonyms
across them (``plane`` -> ``airplane``, ``baseball diamond`` -> ``baseball field``, ``soccer ball field`` and
``football field`` -> ``soccer field``). A user map (JSON object or two-column text file) overrides it; mapping a
name to an empty string or ``null`` drops that category.
"""
from __future__ import annotations

import csv
import json
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Mapping

# Official class lists, as spelled in the label files (used for stable ids and for the default map).
DOTA_CLASSES = (
    "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter", "roundabout",
    "soccer-ball-field", "swimming-pool", "container-crane", "airport", "helipad",
)
DIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam",
    "Expressway-Service-area", "Expressway-toll-station", "golffield", "groundtrackfield", "harbor",
    "overpass", "ship", "stadium", "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)
FAIR1M_CLASSES = (
    "Boeing737", "Boeing747", "Boeing777", "Boeing787", "C919", "A220", "A321", "A330", "A350", "ARJ21",
    "other-airplane", "Passenger Ship", "Motorboat", "Fishing Boat", "Tugboat", "Engineering Ship",
    "Liquid Cargo Ship", "Dry Cargo Ship", "Warship", "other-ship", "Small Car", "Bus", "Cargo Truck",
    "Dump Truck", "Van", "Trailer", "Tractor", "Excavator", "Truck Tractor", "other-vehicle",
    "Basketball Court", "Tennis Court", "Football Field", "Baseball Field", "Intersection", "Roundabout",
    "Bridge",
)
ISAID_CLASSES = (
    "ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court", "Ground_Track_Field",
    "Bridge", "Large_Vehicle", "Small_Vehicle", "Helicopter", "Swimming_pool", "Roundabout",
    "Soccer_ball_field", "plane", "Harbor",
)
FORMAT_CLASSES = {"dota": DOTA_CLASSES, "dior": DIOR_CLASSES, "fair1m": FAIR1M_CLASSES, "coco": ()}

# squashed key -> plain name. Only entries the generic cleaner would get wrong (fused words, synonyms,
# model numbers) need to be here; the rest of each vocabulary is listed for documentation and safety.
DEFAULT_CATEGORY_MAP: dict[str, str] = {
    # synonyms merged across datasets
    "plane": "airplane", "aeroplane": "airplane", "aircraft": "airplane",
    "baseballdiamond": "baseball field", "baseballfield": "baseball field",
    "soccerballfield": "soccer field", "footballfield": "soccer field", "soccerfield": "soccer field",
    "harbour": "harbor", "storetank": "storage tank", "oiltank": "storage tank",
    # fused words (DIOR and friends)
    "storagetank": "storage tank", "tenniscourt": "tennis court", "basketballcourt": "basketball court",
    "groundtrackfield": "ground track field", "golffield": "golf field", "golfcourse": "golf course",
    "trainstation": "train station", "expresswayservicearea": "expressway service area",
    "expresswaytollstation": "expressway toll station", "swimmingpool": "swimming pool",
    "largevehicle": "large vehicle", "smallvehicle": "small vehicle", "containercrane": "container crane",
    "smallcar": "small car", "cargotruck": "cargo truck", "dumptruck": "dump truck",
    "trucktractor": "truck tractor", "fishingboat": "fishing boat", "passengership": "passenger ship",
    "engineeringship": "engineering ship", "liquidcargoship": "liquid cargo ship",
    "drycargoship": "dry cargo ship", "otherairplane": "other airplane", "othership": "other ship",
    "othervehicle": "other vehicle",
    # FAIR1M aircraft models
    "boeing737": "boeing 737", "boeing747": "boeing 747", "boeing777": "boeing 777", "boeing787": "boeing 787",
    "c919": "comac c919", "arj21": "comac arj21", "a220": "airbus a220", "a321": "airbus a321",
    "a330": "airbus a330", "a350": "airbus a350",
    # single words, listed so the whole default vocabulary is visible here
    "ship": "ship", "harbor": "harbor", "bridge": "bridge", "helicopter": "helicopter",
    "roundabout": "roundabout", "airport": "airport", "helipad": "helipad", "airplane": "airplane",
    "chimney": "chimney", "dam": "dam", "overpass": "overpass", "stadium": "stadium", "vehicle": "vehicle",
    "windmill": "windmill", "motorboat": "motorboat", "tugboat": "tugboat", "warship": "warship",
    "bus": "bus", "van": "van", "trailer": "trailer", "tractor": "tractor", "excavator": "excavator",
    "intersection": "intersection",
}

_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def nfc(name: str) -> str:
    """Unicode NFC: one spelling of 'Gebäude' whether the file stored 'ä' as one code point or as 'a' + a
    combining diaeresis."""
    return unicodedata.normalize("NFC", str(name))


def _is_word_char(ch: str) -> bool:
    """Letters, digits and combining marks of any script (the vowel signs of Devanagari are marks, not letters)."""
    return unicodedata.category(ch)[0] in "LNM"


def squash(name: str) -> str:
    """The lookup key of a name: case-folded, letters and digits only, in any script (``Storage-Tank`` ->
    ``storagetank``, ``储罐`` -> ``储罐``)."""
    return "".join(ch for ch in nfc(name).casefold() if _is_word_char(ch))


def clean_name(name: str) -> str:
    """Generic cleaning for names no map knows: split camelCase, punctuation to words, lower case. Letters and
    digits of every script are kept ('Gebäude' -> 'gebäude', '储罐' stays)."""
    s = _CAMEL.sub(" ", nfc(name).strip())
    s = re.sub(r"\bw/\s*", "with ", s, flags=re.IGNORECASE)
    s = s.replace("&", " and ").replace("/", " or ")
    s = re.sub(r"[_\-.,;:()\[\]{}'\"]+", " ", s)
    s = "".join(ch for ch in s if _is_word_char(ch) or ch == " ")
    return re.sub(r"\s+", " ", s).strip().lower()


class CategoryMap:
    """Maps raw dataset category names to plain names (``None`` means: drop objects of that category).

    >>> m = CategoryMap()
    >>> m("storage-tank"), m("storagetank"), m("Storage_Tank"), m("Truck w/Box")
    ('storage tank', 'storage tank', 'storage tank', 'truck with box')
    """

    def __init__(self, overrides: Mapping[str, str | None] | None = None, use_default: bool = True):
        self.table: dict[str, str | None] = dict(DEFAULT_CATEGORY_MAP) if use_default else {}
        for raw, plain in (overrides or {}).items():
            self.table[squash(raw)] = clean_name(plain) if plain else None

    def __call__(self, raw: str) -> str | None:
        key = squash(raw)
        if key in self.table:
            return self.table[key]
        plain = clean_name(raw)
        return plain or None

    def vocabulary(self, raw_names: Iterable[str]) -> list[str]:
        """Sorted unique plain names of ``raw_names`` (dropped ones left out)."""
        return sorted({n for n in (self(r) for r in raw_names) if n})

    @classmethod
    def from_file(cls, path: str | Path, use_default: bool = True) -> "CategoryMap":
        return cls(load_category_map(path), use_default=use_default)


def load_category_map(path: str | Path) -> dict[str, str | None]:
    """Read a user map: a JSON object ``{"raw": "plain" or null}``, or a text file with one ``raw,plain`` (or
    tab-separated) pair per line; ``#`` starts a comment, an empty plain name drops the category."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category map {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a category map in JSON must be an object {{raw: plain}}, "
                             f"got {type(data).__name__}")
        for k, v in data.items():
            if v is not None and not isinstance(v, str):
                raise ValueError(f"{path}: value for {k!r} must be a string or null, got {v!r}")
        return dict(data)
    out: dict[str, str | None] = {}
    delimiter = "\t" if "\t" in text else ","
    for lineno, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) > 2:
            raise ValueError(f"{path}:{lineno}: expected 'raw{delimiter}plain', got {len(row)} fields")
        raw = row[0].strip()
        plain = row[1].strip() if len(row) == 2 else ""
        out[raw] = plain or None
    return out


def assign_category_ids(names: Iterable[str], fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """Stable ids: names already in ``fixed`` keep their id; the others, sorted, get the next free ids.

    Sorting makes the result independent of the order in which images were processed, so two runs (or
    a train and a val split built separately from the same vocabulary) agree.
    """
    ids = dict(fixed or {})
    used = set(ids.values())
    if len(used) != len(ids):
        raise ValueError("category id table maps two names to the same id")
    nxt = 0
    for name in sorted(set(names) - set(ids)):
        while nxt in used:
            nxt += 1
        ids[name] = nxt
        used.add(nxt)
    return dict(sorted(ids.items(), key=lambda kv: kv[1]))


def load_category_ids(path: str | Path) -> dict[str, int]:
    """Read a category table: JSON ``{"name": id}`` or a JSON list of names (id = position), or a text file with
    one name per line (id = line index). Names are used as given (already plain)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"category table {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            data = {nfc(n): i for i, n in enumerate(data)}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object {{name: id}} or a list of names")
        out = {}
        for k, v in data.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{path}: id of {k!r} must be an integer, got {v!r}")
            out[nfc(k)] = v
    else:
        out = {nfc(line.strip()): i for i, line in enumerate(l for l in text.splitlines() if l.strip())}
    if len(set(out.values())) != len(out):
        raise ValueError(f"{path}: two names share one id")
    return out


_DEFAULT = None


def normalize_category(name: str, mapping: Mapping[str, str | None] | None = None) -> str | None:
    """Plain name of one raw category name (default map, plus ``mapping`` overrides); None: dropped.

    >>> normalize_category("storage-tank"), normalize_category("storagetank"), normalize_category("plane")
    ('storage tank', 'storage tank', 'airplane')
    """
    global _DEFAULT
    if mapping:
        return CategoryMap(mapping)(name)
    if _DEFAULT is None:
        _DEFAULT = CategoryMap()
    return _DEFAULT(name)
