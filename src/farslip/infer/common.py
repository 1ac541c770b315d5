"""What every inference command shares: loading the model once, parsing class lists, normalising pixels."""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..core.errors import UsageError
from ..engine.class_files import resolve_class_file
from ..models.loading import load_model


#: The mark of the PNGs farslip draws (previews, contact sheets), as the COGs' ``SOFTWARE=farslip`` tag: ``search
#: index`` leaves them out of a folder it indexes.
PNG_METADATA = {"Software": "farslip"}


def load_for_inference(arch: str | None = None, checkpoint: str | Path | None = None, *, device: str = "auto",
                       precision: str = "fp32"):
    """``(model, preprocess_eval, tokenizer)`` in eval mode on the chosen device; the arguments are
    :func:`~farslip.load_model`'s, in its order."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, preprocess, tokenizer = load_model(arch, checkpoint, device=device, precision=precision)
    return model.eval(), preprocess, tokenizer


def parse_classes(classes: Sequence[str] | None = None, classes_file: str | Path | None = None, *,
                  option: str = "--classes") -> list[list[str]]:
    """One entry per class, synonyms joined by commas (SegEarth-OV's class-file convention); names Unicode
    NFC-normalised. A name given to two classes is refused (the text encoder lower-cases, so case does not make two
    names): the maps and the fractions would otherwise disagree about which class a pixel is. So is an empty class
    (``--classes "" water``): dropping it would silently change what the user asked for."""
    lines: list[tuple[str, str]] = []  # (where, line)
    if classes_file:
        path = resolve_class_file(classes_file)  # a file, or a shipped set's name (openearthmap, loveda, ...)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not a UTF-8 text file (a class file has one class per line)") from None
        lines += [(f"{path}:{i}", ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    lines += [(f"{option} {c!r}", c) for c in classes or []]
    parsed, owner = [], {}
    for place, line in lines:
        synonyms = list(dict.fromkeys(unicodedata.normalize("NFC", s.strip()) for s in line.split(",") if s.strip()))
        if not synonyms:
            raise UsageError(f"{place}: an empty class name; each class is one non-empty argument (or line), "
                             "synonyms joined by commas, e.g. --classes \"tree,forest\" road")
        for name in synonyms:
            key = name.casefold()
            if key in owner:
                raise UsageError(f"class name {name!r} is given twice ({owner[key]} and {place}); name each class "
                                 "once and join synonyms with commas, e.g. --classes \"tree,forest\" road")
            owner[key] = place
        parsed.append(synonyms)
    if not parsed:
        raise UsageError("no classes given: pass --classes NAME [NAME ...] or --classes-file FILE")
    return parsed


def parse_bands(text: str | Sequence[int] | None) -> list[int] | None:
    """``--bands``: one band (shown as grey) or three (R,G,B), 1-based integers, e.g. ``4,3,2``."""
    if text is None or text == "":
        return None
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        bands = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise UsageError(f"--bands {text}: expected 1-based band numbers separated by commas, e.g. 4,3,2") from None
    if len(bands) not in (1, 3):
        raise UsageError(f"--bands {text}: give three bands (R,G,B, e.g. 4,3,2) or one (grey), not {len(bands)}")
    if any(b < 1 for b in bands):
        raise UsageError(f"--bands {text}: band numbers start at 1")
    return bands


class PixelProgress:
    """The tiles of a scene with a progress bar counted in pixels (``0.42M/16.8M px``, rate and time left), moving
    within a tile as its windows are encoded (``windows_done``, given to the engine as ``on_batch``): a bar of
    tiles would sit at 0/1 for the whole of a 1 Mpx image."""

    def __init__(self, tiles, total_pixels: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.tiles = tiles
        self.bar = tqdm(total=total_pixels, desc=desc, unit="px", unit_scale=True, disable=not enabled)
        self._tile_pixels = self._counted = 0

    def __iter__(self) -> Iterator:
        with self.bar:
            for tile in self.tiles:
                self._tile_pixels, self._counted = int(tile.window.width * tile.window.height), 0
                yield tile
                self.bar.update(self._tile_pixels - self._counted)  # the rest of it (a tile without windows: all)

    def windows_done(self, share: float) -> None:
        """``share`` of the current tile's windows were encoded."""
        step = min(round(share * self._tile_pixels), self._tile_pixels - self._counted)
        self._counted += step
        self.bar.update(step)
