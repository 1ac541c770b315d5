"""Objects: polygons with the shapes and sizes of airplanes, ships, tanks, vehicles, courts, buildings, pools."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Shape:
    """An object to draw: polygons and ellipses with colours; the first part's label is painted in the map."""

    category: str
    polygons: list[tuple[list[tuple[float, float]], tuple[int, int, int]]] = field(default_factory=list)
    ellipses: list[tuple[tuple[float, float, float, float], tuple[int, int, int]]] = field(default_factory=list)
    shadow: float = 2.0

    def bounds(self) -> tuple[float, float, float, float]:
        xs, ys = [], []
        for pts, _ in self.polygons:
            xs += [p[0] for p in pts]
            ys += [p[1] for p in pts]
        for (x1, y1, x2, y2), _ in self.ellipses:
            xs += [x1, x2]
            ys += [y1, y2]
        return min(xs), min(ys), max(xs), max(ys)


def _place(pts, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _rect(length: float, width: float, x0: float = 0.0, y0: float = 0.0):
    return [(x0 - length / 2, y0 - width / 2), (x0 + length / 2, y0 - width / 2),
            (x0 + length / 2, y0 + width / 2), (x0 - length / 2, y0 + width / 2)]


def airplane(cx, cy, angle, length, colour=(228, 228, 232)) -> Shape:
    L = length
    w = 0.11 * L
    fus = [(-L / 2, -w / 2), (0.42 * L, -w / 2), (L / 2, 0), (0.42 * L, w / 2), (-L / 2, w / 2)]
    wing1 = [(0.10 * L, -w / 2), (-0.10 * L, -0.48 * L), (-0.20 * L, -0.48 * L), (-0.10 * L, -w / 2)]
    wing2 = [(x, -y) for x, y in wing1]
    tail1 = [(-0.36 * L, -w / 2), (-0.45 * L, -0.19 * L), (-0.50 * L, -0.19 * L), (-0.46 * L, -w / 2)]
    tail2 = [(x, -y) for x, y in tail1]
    return Shape("airplane", [(_place(p, cx, cy, angle), colour) for p in (fus, wing1, wing2, tail1, tail2)],
                 shadow=max(1.5, L / 14))


def ship(cx, cy, angle, length, colour, deck=(235, 235, 235)) -> Shape:
    L, w = length, 0.24 * length
    hull = [(-L / 2, -w / 2), (L / 2 - w, -w / 2), (L / 2, 0), (L / 2 - w, w / 2), (-L / 2, w / 2)]
    bridge = _rect(0.18 * L, 0.7 * w, -0.3 * L)
    return Shape("ship", [(_place(hull, cx, cy, angle), colour), (_place(bridge, cx, cy, angle), deck)],
                 shadow=max(1.0, L / 20))


def storage_tank(cx, cy, r, colour=(222, 222, 216)) -> Shape:
    inner = tuple(int(c * 0.88) for c in colour)
    return Shape("storage tank", ellipses=[((cx - r, cy - r, cx + r, cy + r), colour),
                                           ((cx - 0.7 * r, cy - 0.7 * r, cx + 0.7 * r, cy + 0.7 * r), inner)],
                 shadow=max(1.5, r / 3))


def vehicle(cx, cy, angle, length, colour) -> Shape:
    return Shape("vehicle", [(_place(_rect(length, 0.5 * length), cx, cy, angle), colour)], shadow=1.0)


def building(cx, cy, angle, length, width, colour, ridge: bool = False, stripes: int = 0) -> Shape:
    parts = [(_place(_rect(length, width), cx, cy, angle), colour)]
    dark = tuple(int(c * 0.8) for c in colour)
    if ridge:
        parts.append((_place(_rect(length, max(1.0, 0.12 * width)), cx, cy, angle), dark))
    for i in range(stripes):
        x = -length / 2 + (i + 0.5) * length / stripes
        parts.append((_place(_rect(max(1.0, 0.06 * length), width * 0.96, x), cx, cy, angle), dark))
    return Shape("building", parts, shadow=max(1.5, 0.15 * min(length, width)))


def tennis_court(cx, cy, angle, length, outer=(168, 92, 62), inner=(58, 128, 84)) -> Shape:
    w = 0.55 * length
    line = (240, 240, 240)
    parts = [(_place(_rect(length, w), cx, cy, angle), outer),
             (_place(_rect(0.8 * length, 0.72 * w), cx, cy, angle), line),
             (_place(_rect(0.8 * length - 2, 0.72 * w - 2), cx, cy, angle), inner),
             (_place(_rect(1.0, 0.72 * w), cx, cy, angle), line)]
    return Shape("tennis court", parts, shadow=0.0)


def swimming_pool(cx, cy, angle, length) -> Shape:
    w = 0.55 * length
    return Shape("swimming pool", [(_place(_rect(length, w), cx, cy, angle), (236, 236, 232)),
                                   (_place(_rect(length - 2, w - 2), cx, cy, angle), (64, 176, 206))], shadow=0.0)


