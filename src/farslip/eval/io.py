"""Reading evaluation inputs: CSV tables, class-name files, images and label maps, with errors that name the file,
the record and the field at fault.

Bad records can either stop the run (``on_error="raise"``, the default of the Python API) or be skipped and
counted (``on_error="skip"``, what the benchmark suites use). Datasets never raise inside DataLoader workers:
they hand back a :class:`BadRecord`, and the consumer decides in the main process.
"""
from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile


class EvalDataError(ValueError):
    """An evaluation input that cannot be used; the message names the file, record and field."""


@dataclass
class BadRecord:
    """Placeholder a dataset returns for a record it could not read (the reason is in ``error``)."""
    index: int
    error: str


class ErrorPolicy:
    """Collects bad records: raises on the first one (``"raise"``) or counts them (``"skip"``)."""

    def __init__(self, on_error: str = "raise", keep: int = 20):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.count = 0
        self.examples: list[str] = []
        self.keep = keep

    def __call__(self, message: str) -> None:
        if self.on_error == "raise":
            raise EvalDataError(message)
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)

    def summary(self) -> dict:
        return {"skipped": self.count, "errors": list(self.examples)}


# ----------------------------------------------------------------------------------------------------------------
# Tables and name files

@dataclass
class CsvRow:
    line: int          # 1-based line number in the file (header is line 1)
    values: dict


def read_csv(path: str | os.PathLike, required: Sequence[str], sep: str = ",") -> list[CsvRow]:
    """Rows of a delimited table as dicts, checking that the ``required`` columns exist.

    Quoting follows the csv module (the same conventions pandas reads). Raises :class:`EvalDataError` naming the
    file and the missing column (and the columns it does have).
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=sep)
        fields = reader.fieldnames or []
        missing = [c for c in required if c not in fields]
        if missing:
            raise EvalDataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                                f"columns found: {', '.join(map(repr, fields)) or 'none (empty file?)'}"
                                + ("" if sep != "," or len(fields) != 1 else " -- wrong separator?"))
        rows = []
        for values in reader:
            rows.append(CsvRow(reader.line_num, values))
    return rows


def read_name_lines(path: str | os.PathLike) -> list[str]:
    """One name a line, stripped (SkyScript's ``classnames.txt`` convention); blank lines are an error."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [ln.strip() for ln in lines]
    for i, name in enumerate(names):
        if not name:
            raise EvalDataError(f"{path}:{i + 1}: empty class name")
    if not names:
        raise EvalDataError(f"{path}: no class names")
    return names


def read_synonym_file(path: str | os.PathLike) -> list[list[str]]:
    """SegEarth-OV class file: one class a line in label order, synonyms separated by commas."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    classes = []
    for i, line in enumerate(lines):
        names = [n.strip() for n in line.split(",")]
        if not all(names):
            raise EvalDataError(f"{path}:{i + 1}: empty class name in {line!r}")
        classes.append(names)
    if not classes:
        raise EvalDataError(f"{path}: no class names")
    return classes


# ----------------------------------------------------------------------------------------------------------------
# Images

@contextlib.contextmanager
def _lenient_pil() -> Iterator[None]:
    """Accept truncated files and very large images while loading (as the official scripts do), then restore."""
    old_trunc, old_max = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, None
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = old_trunc, old_max


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image with PIL (any mode; callers convert). Raises OSError with the path."""
    with _lenient_pil():
        img = Image.open(path)
        img.load()
    return img


def _read_raster(path: str | os.PathLike) -> np.ndarray:
    """Fallback for GeoTIFFs PIL cannot decode: bands-last array via rasterio."""
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read()
    return np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]


def read_rgb_array(path: str | os.PathLike) -> np.ndarray:
    """An image as ``uint8 [H, W, 3]`` RGB (grey is repeated, alpha dropped, 16-bit rescaled by 1/256)."""
    try:
        img = open_image(path)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img).astype(np.float64) / 256.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
            return np.repeat(arr[..., None], 3, axis=-1)
        return np.array(img.convert("RGB"))
    except Exception as pil_error:  # noqa: BLE001 -- try rasterio for TIFF flavours PIL does not know
        if str(path).lower().endswith((".tif", ".tiff")):
            arr = _read_raster(path)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=-1)
            arr = arr[..., :3]
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            return np.ascontiguousarray(arr)
        raise pil_error


def read_label_array(path: str | os.PathLike) -> np.ndarray:
    """A label map as an integer ``[H, W]`` array, values unchanged (palette PNGs give their indices)."""
    try:
        img = open_image(path)
        arr = np.asarray(img)
    except Exception as pil_error:  # noqa: BLE001
        if str(path).lower().endswith((".tif", ".tiff")):
            arr = _read_raster(path)
        else:
            raise pil_error
    if arr.ndim == 3:
        if arr.shape[-1] >= 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise EvalDataError(f"{path}: label map has {arr.shape[-1]} channels; expected one band of class "
                                f"indices (convert colour-coded labels with SegEarth-OV's converters)")
    return arr.astype(np.int64)
