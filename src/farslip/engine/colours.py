"""Class colours for maps and overlays (the same colour for a class in every picture farslip draws).

Class maps colour the classes they know by the conventions of land-cover maps (CORINE Land Cover, ESA
WorldCover): water blue, trees dark green, grass and low vegetation light green, cropland yellow, buildings red,
roads and paved surfaces grey, bare ground tan, wetland teal, snow near-white; "background" and "clutter" black.
Other classes (ships, planes, tennis courts...) get distinct colours from a fixed list.
"""
from __future__ import annotations

import colorsys
import re
from typing import Sequence

import numpy as np

_BASE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
         (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
         (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
         (0, 0, 128), (128, 128, 128)]
IGNORE_COLOUR = (255, 255, 255)


def palette(n: int) -> np.ndarray:
    """``[n, 3] uint8`` distinct colours (a fixed list, then evenly spaced hues)."""
    cols = list(_BASE[:n])
    for i in range(len(cols), n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8)


def colourise(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Class-index map -> RGB (ignored or out-of-range pixels white)."""
    pal = palette(num_classes)
    out = np.empty(label.shape + (3,), dtype=np.uint8)
    out[:] = IGNORE_COLOUR
    valid = (label >= 0) & (label < num_classes) & (label != ignore_index)
    out[valid] = pal[label[valid]]
    return out



#: Land-cover colours by the words of a class name, tried in this order (the first rule with a word of the name
#: wins: "low vegetation" is grass, not generic vegetation).
LAND_COVER: tuple[tuple[tuple[str, ...], tuple[int, int, int]], ...] = (
    (("background", "clutter", "other", "unknown", "void", "unlabeled", "unlabelled"), (0, 0, 0)),
    (("low vegetation", "grass", "grassland", "meadow", "lawn", "rangeland", "pasture"), (130, 200, 80)),
    (("shrub", "shrubland", "bush", "scrub"), (170, 170, 50)),
    (("tree", "trees", "forest", "woodland", "wood", "mangrove"), (0, 100, 0)),
    (("vegetation", "green space", "park"), (60, 160, 60)),
    (("cropland", "crop", "crops", "agriculture", "agricultural", "farmland", "arable", "paddy"), (240, 210, 60)),
    (("water", "river", "lake", "sea", "ocean", "pond", "reservoir", "canal", "stream"), (0, 90, 220)),
    (("wetland", "marsh", "swamp"), (0, 150, 160)),
    (("building", "buildings", "roof", "house", "facade", "built-up", "urban", "residential"), (220, 30, 30)),
    (("road", "roads", "street", "highway", "pavement", "paved", "impervious", "parking lot", "parking"),
     (128, 128, 128)),
    (("bare", "bareland", "barren", "soil", "sand", "desert", "rock", "dirt"), (205, 170, 110)),
    (("snow", "ice", "glacier"), (225, 235, 245)),
    (("car", "cars", "vehicle", "vehicles", "truck", "bus"), (255, 0, 255)),
)


def land_cover_colour(name: str) -> tuple[int, int, int] | None:
    """The conventional colour of a class by its name or synonyms (``"tree,forest"``), or None."""
    words = [n.strip().lower() for n in name.split(",") if n.strip()]
    for keys, colour in LAND_COVER:
        if any(re.search(rf"\b{re.escape(k)}\b", w) for w in words for k in keys):
            return colour
    return None


def class_colours(names: Sequence[str]) -> np.ndarray:
    """``[n, 3] uint8`` colours for the classes ``names`` (each a name or ``"a,b"`` synonyms): the land-cover
    convention where the name says what the class is, distinct colours for the others. Two classes of one
    convention (``road`` and ``pavement``) get shades of it; no two classes share a colour."""
    chosen: list[tuple[int, int, int] | None] = [land_cover_colour(n) for n in names]
    used: list[tuple[int, int, int]] = []
    for i, colour in enumerate(chosen):
        if colour is None:
            continue
        shades = [colour] + [_shade(colour, f) for f in (0.45, -0.45, 0.7, -0.7)]
        chosen[i] = next((c for c in shades if c not in used), shades[0])
        used.append(chosen[i])
    candidates = [tuple(int(v) for v in rgb) for rgb in palette(2 * len(names) + len(_BASE))[1:]]
    for i, colour in enumerate(chosen):
        if colour is None:  # the first listed colour far from those taken; with many classes, any one not taken
            chosen[i] = next((c for c in candidates if all(_distance(c, u) > 80 for u in used)), None) or \
                next(c for c in candidates if c not in used)
            used.append(chosen[i])
    return np.array(chosen, dtype=np.uint8).reshape(len(names), 3)


def _shade(rgb: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """Lighter (``f`` > 0: towards white) or darker (towards black) by the fraction ``|f|``."""
    target = 255 if f > 0 else 0
    return tuple(int(round(c + (target - c) * abs(f))) for c in rgb)


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))
