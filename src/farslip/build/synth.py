"""A procedural remote-sensing world: aerial-like scenes written in every format the project reads.

Eight scene classes (airport, harbor, farmland, forest, residential area, industrial area, river, desert), each
built from land-cover regions with their own colours and textures (water, forest, farmland parcels, bare land,
roads, built-up) and objects with distinct shapes and sizes (airplane, ship, storage tank, vehicle, tennis
court, building, swimming pool). Everything is vectorised numpy plus PIL polygon drawing: no per-pixel Python.

``synth_world(out, n, seed)`` writes ``n`` training images and ``n_test`` held-out images::

    OUT/mgrs/text_info.json, OUT/mgrs/global_imgs/     MGRS JSON (training images, template captions);
                                                       global_filepath is relative to global_imgs/ ("000000.jpg")
    OUT/rs5m/shard-000000.tar                          RS5M-style webdataset (img_content, img_name, caption)
    OUT/captions.csv                                   filepath,title (training images, paths relative to OUT)
    OUT/cls/test.csv, classnames.txt, images/          scene classification (held-out images)
    OUT/retrieval/test.csv, images/                    image-text retrieval (held-out images, 2 captions each)
    OUT/ovss/img_dir/val, ann_dir/val, classes.txt     open-vocabulary segmentation (held-out images)
    OUT/world.json                                     what was written

The same ``seed`` gives byte-identical files.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .captions import TemplateCaptioner
from .mgrs import mgrs_record, write_mgrs_json
from .names import assign_category_ids

SCENES = ("airport", "harbor", "farmland", "forest", "residential area", "industrial area", "river", "desert")
OBJECT_CATEGORIES = ("airplane", "building", "ship", "storage tank", "swimming pool", "tennis court", "vehicle")

# land-cover / OVSS label values (background index 0)
BACKGROUND, WATER, FOREST, FARMLAND, BARE, ROAD, BUILDING = 0, 1, 2, 3, 4, 5, 6
AIRPLANE, SHIP, TANK, VEHICLE, COURT, POOL = 7, 8, 9, 10, 11, 12
OVSS_CLASSES = (
    ("background",),
    ("water", "river", "lake", "sea"),
    ("forest", "tree", "woodland"),
    ("farmland", "cropland", "agricultural field"),
    ("bare land", "barren", "desert", "sand"),
    ("road", "runway", "pavement"),
    ("building", "roof", "house"),
    ("airplane", "plane", "aircraft"),
    ("ship", "boat"),
    ("storage tank", "tank"),
    ("vehicle", "car"),
    ("tennis court",),
    ("swimming pool", "pool"),
)
OBJECT_LABEL = {"airplane": AIRPLANE, "building": BUILDING, "ship": SHIP, "storage tank": TANK,
                "swimming pool": POOL, "tennis court": COURT, "vehicle": VEHICLE}
LAND_COVER_NAMES = {WATER: "water", FOREST: "forest", FARMLAND: "farmland", BARE: "bare land", ROAD: "road"}

_BG_STYLES = {"dry grass": (150, 146, 104), "lawn": (98, 134, 70), "concrete": (158, 155, 147),
              "meadow": (112, 140, 78)}
_ROOFS_HOUSE = ((156, 72, 58), (120, 118, 124), (84, 78, 78), (182, 112, 72), (140, 96, 80))
_ROOFS_BIG = ((196, 196, 200), (96, 124, 164), (214, 214, 210), (150, 160, 168))
_CAR_COLOURS = ((200, 40, 40), (40, 60, 170), (235, 235, 235), (30, 30, 30), (170, 170, 175), (220, 200, 60))
_FIELD_COLOURS = np.array([(124, 160, 70), (76, 122, 52), (192, 176, 100), (146, 112, 76), (172, 162, 118),
                           (104, 140, 60)], np.float32)


# ------------------------------------------------------------------------------------------------ textures

@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [0, 1] (a random cells x cells grid, bicubically enlarged)."""
    a = rng.random((cells, cells), dtype=np.float32)
    return np.clip(np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)), 0.0, 1.0)


def _fbm(rng: np.random.Generator, size: int, octaves=((3, 0.45), (6, 0.3), (12, 0.15), (24, 0.1))) -> np.ndarray:
    return sum(w * _noise(rng, size, c) for c, w in octaves)


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


# ------------------------------------------------------------------------------------------------ canvas

class Canvas:
    """Land-cover map + styles + objects of one scene, then rendered to RGB."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.S, self.rng, self.k = size, rng, size / 224.0
        self.lc = np.zeros((size, size), np.uint8)
        self.bg = "meadow"
        self.styles: dict[int, dict] = {}
        self.paints: list[tuple[np.ndarray, tuple[int, int, int], float]] = []  # after land cover, before objects
        self.shapes: list[Shape] = []
        self._boxes: list[tuple[float, float, float, float]] = []

    def frame(self, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates in a frame centred at (cx, cy), u along ``angle``."""
        yy, xx = _grid(self.S)
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = xx - cx, yy - cy
        return dx * c + dy * s, -dx * s + dy * c

    @staticmethod
    def to_image(u: float, v: float, cx: float, cy: float, angle: float) -> tuple[float, float]:
        c, s = math.cos(angle), math.sin(angle)
        return cx + u * c - v * s, cy + u * s + v * c

    def add(self, shape: Shape, allowed: np.ndarray | None = None, gap: float = 1.0) -> bool:
        """Add ``shape`` if it lies inside the image, clear of other objects and (optionally) on ``allowed``."""
        x1, y1, x2, y2 = shape.bounds()
        if x1 < 1 or y1 < 1 or x2 > self.S - 1 or y2 > self.S - 1:
            return False
        for bx1, by1, bx2, by2 in self._boxes:
            if x1 < bx2 + gap and bx1 < x2 + gap and y1 < by2 + gap and by1 < y2 + gap:
                return False
        if allowed is not None:
            pts = [(x1, y1), (x2, y1), (x1, y2), (x2, y2), ((x1 + x2) / 2, (y1 + y2) / 2)]
            if not all(allowed[min(self.S - 1, int(y)), min(self.S - 1, int(x))] for x, y in pts):
                return False
        self.shapes.append(shape)
        self._boxes.append((x1, y1, x2, y2))
        return True

    def scatter(self, make, count: int, mask: np.ndarray, tries: int = 12, gap: float = 1.0) -> int:
        """Place up to ``count`` shapes ``make(x, y)`` at random points of ``mask``, ``tries`` attempts each."""
        placed = 0
        for _ in range(count):
            for _ in range(tries):
                p = self.sample_point(mask)
                if p is None:
                    return placed
                if self.add(make(*p), mask, gap=gap):
                    placed += 1
                    break
        return placed

    def sample_point(self, mask: np.ndarray) -> tuple[float, float] | None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return None
        i = int(idx[self.rng.integers(idx.size)])
        y, x = divmod(i, self.S)
        return float(x) + 0.5, float(y) + 0.5

    # -------------------------------------------------------------------------------------------- render
    def render(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        S, rng = self.S, self.rng
        img = np.empty((S, S, 3), np.float32)
        for cls in np.unique(self.lc):
            mask = self.lc == cls
            img[mask] = self._texture(int(cls))[mask]
        for mask, colour, amp in self.paints:
            tex = np.asarray(colour, np.float32) * (1 - amp / 2 + amp * _noise(rng, S, 24))[..., None]
            img[mask] = tex[mask]
        jitter = 1.0 + rng.normal(0, 0.03, 3).astype(np.float32)
        img = img * jitter + rng.normal(0, 2.5, (S, S, 1)).astype(np.float32)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        lab = Image.fromarray(self.lc)
        draw, ldraw = ImageDraw.Draw(pil), ImageDraw.Draw(lab)
        objects = []
        for shp in self.shapes:
            label = OBJECT_LABEL[shp.category]
            if shp.shadow:
                d = shp.shadow
                for pts, _ in shp.polygons:
                    draw.polygon([(x + d, y + d) for x, y in pts], fill=(38, 40, 36))
                for (x1, y1, x2, y2), _ in shp.ellipses:
                    draw.ellipse((x1 + d, y1 + d, x2 + d, y2 + d), fill=(38, 40, 36))
            for i, (pts, colour) in enumerate(shp.polygons):
                draw.polygon(pts, fill=colour)
                if i == 0 or shp.category in ("airplane",):
                    ldraw.polygon(pts, fill=label)
            for i, (box, colour) in enumerate(shp.ellipses):
                draw.ellipse(box, fill=colour)
                if i == 0:
                    ldraw.ellipse(box, fill=label)
            x1, y1, x2, y2 = shp.bounds()
            objects.append({"category": shp.category,
                            "box": [max(0, math.floor(x1)), max(0, math.floor(y1)),
                                    min(S, math.floor(x2) + 1), min(S, math.floor(y2) + 1)]})
        return np.asarray(pil), np.asarray(lab), objects

    def _texture(self, cls: int) -> np.ndarray:
        S, rng = self.S, self.rng
        st = self.styles.get(cls, {})
        if cls == BACKGROUND:
            base = np.asarray(_BG_STYLES[self.bg], np.float32)
            t = 0.82 + 0.36 * _fbm(rng, S)
            return base * t[..., None]
        if cls == WATER:
            base = np.asarray(st.get("colour", (30, 64, 98)), np.float32)
            yy, xx = _grid(S)
            t = 0.9 + 0.2 * _noise(rng, S, 4) + 0.03 * np.sin(0.9 * yy / self.k + 4 * _noise(rng, S, 6))
            return base * t[..., None]
        if cls == FOREST:
            base = np.asarray((36, 76, 36), np.float32)
            canopy = _noise(rng, S, max(8, int(S / 5))) * 0.6 + _noise(rng, S, max(4, int(S / 12))) * 0.4
            t = 0.55 + 0.9 * canopy ** 1.5
            return base * t[..., None]
        if cls == FARMLAND:
            u, v = st["u"], st["v"]
            iu = np.digitize(u, st["ucuts"])
            iv = np.digitize(v, st["vcuts"])
            pid = iu * (len(st["vcuts"]) + 1) + iv
            n = (len(st["ucuts"]) + 1) * (len(st["vcuts"]) + 1)
            colours = _FIELD_COLOURS[rng.integers(0, len(_FIELD_COLOURS), n)]
            period = rng.uniform(3.0, 7.0, n).astype(np.float32) * self.k
            along_u = rng.random(n) < 0.5
            coord = np.where(along_u[pid], u, v)
            stripes = 0.9 + 0.1 * np.sin(2 * np.pi * coord / period[pid])
            t = stripes * (0.92 + 0.16 * _noise(rng, S, 10))
            img = colours[pid] * t[..., None]
            edge = np.zeros((S, S), bool)
            for c in st["ucuts"]:
                edge |= np.abs(u - c) < 0.8 * self.k
            for c in st["vcuts"]:
                edge |= np.abs(v - c) < 0.8 * self.k
            img[edge] *= 0.75
            return img
        if cls == BARE:
            if st.get("kind") == "dirt":
                return np.asarray((150, 120, 86), np.float32) * (0.85 + 0.3 * _fbm(rng, S))[..., None]
            u, _ = self.frame(S / 2, S / 2, st.get("angle", 0.3))
            period = st.get("period", 14.0) * self.k
            dunes = np.sin(2 * np.pi * u / period + 5 * _noise(rng, S, 5))
            t = 0.9 + 0.12 * _fbm(rng, S) + 0.07 * dunes
            rocks = _noise(rng, S, 9) > 0.78
            img = np.asarray((210, 180, 130), np.float32) * t[..., None]
            img[rocks] *= 0.8
            return img
        if cls == ROAD:
            base = np.asarray(st.get("colour", (92, 92, 96)), np.float32)
            return base * (0.93 + 0.14 * _noise(rng, S, 40))[..., None]
        return np.full((S, S, 3), 128, np.float32)


# ------------------------------------------------------------------------------------------------ scenes

def _u(rng, a, b):
    return float(rng.uniform(a, b))


def _airport(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.bg = "dry grass"
    ang = _u(rng, 0, math.pi)
    cx, cy = S / 2 + _u(rng, -0.12, 0.12) * S, S / 2 + _u(rng, -0.12, 0.12) * S
    u, v = cv.frame(cx, cy, ang)
    side = 1 if rng.random() < 0.5 else -1
    rw = _u(rng, 14, 20) * k
    taxi = rw / 2 + _u(rng, 16, 22) * k
    depth = _u(rng, 55, 75) * k
    half = _u(rng, 55, 95) * k
    u0 = _u(rng, -30, 30) * k
    runway = np.abs(v) < rw / 2
    taxiway = np.abs(v - side * taxi) < 3.5 * k
    apron = (side * v > taxi + 3 * k) & (side * v < taxi + depth) & (np.abs(u - u0) < half)
    conn = np.zeros_like(runway)
    for uc in (u0 - half * 0.8, u0 + half * 0.8):
        conn |= (np.abs(u - uc) < 3 * k) & (side * v > 0) & (side * v < taxi)
    cv.lc[runway | taxiway | apron | conn] = ROAD
    cv.styles[ROAD] = {"colour": (84, 84, 88)}
    cv.paints.append((apron, (168, 166, 160), 0.08))
    cv.paints.append((runway & (np.abs(v) < 0.9 * k) & (np.sin(u / (4 * k)) > 0.2), (238, 238, 238), 0.0))
    cv.paints.append((runway & (np.abs(np.abs(v) - rw / 2 + 1.5 * k) < 0.6 * k), (230, 230, 230), 0.0))
    on_apron = apron.copy()
    # parked airplanes, noses to the taxiway
    n = int(rng.integers(2, 7))
    L = _u(rng, 30, 44) * k
    nose = math.atan2(-side * math.cos(ang), side * math.sin(ang))
    us = np.linspace(u0 - half + L * 0.6, u0 + half - L * 0.6, max(n, 2))
    for uu in us[:n]:
        x, y = cv.to_image(uu + _u(rng, -2, 2) * k, side * (taxi + 4 * k + L * 0.55), cx, cy, ang)
        cv.add(airplane(x, y, nose + _u(rng, -0.08, 0.08), L * _u(rng, 0.85, 1.1)), on_apron)
    if rng.random() < 0.6:  # one taxiing or landing
        x, y = cv.to_image(_u(rng, -0.3, 0.3) * S, 0.0, cx, cy, ang)
        cv.add(airplane(x, y, ang + (math.pi if rng.random() < 0.5 else 0), L * _u(rng, 0.9, 1.2)))
    # terminal along the far side of the apron
    x, y = cv.to_image(u0, side * (taxi + depth + 9 * k), cx, cy, ang)
    cv.add(building(x, y, ang, 2 * half * _u(rng, 0.5, 0.8), _u(rng, 12, 18) * k, (200, 200, 206), stripes=3))
    for _ in range(int(rng.integers(0, 5))):
        p = cv.sample_point(on_apron)
        if p:
            cv.add(vehicle(p[0], p[1], ang + math.pi / 2 * int(rng.integers(0, 2)), 8 * k,
                           _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]), on_apron)


def _harbor(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.bg = "concrete"
    ang = _u(rng, 0, 2 * math.pi)
    u, v = cv.frame(S / 2, S / 2, ang)
    c0 = _u(rng, -0.12, 0.08) * S
    water = v + (_noise(rng, S, 4) - 0.5) * 10 * k > c0
    cv.lc[water] = WATER
    cv.styles[WATER] = {"colour": (28, 58, 96)}
    land = ~water
    if rng.random() < 0.6:
        road = (np.abs(v - (c0 - _u(rng, 14, 24) * k)) < 4 * k) & land
        cv.lc[road] = ROAD
        land &= ~road
    npier = int(rng.integers(2, 5))
    span = 0.8 * S
    piers = []
    for j in range(npier):
        uj = -span / 2 + (j + 0.5) * span / npier + _u(rng, -6, 6) * k
        plen = _u(rng, 35, 80) * k
        pw = _u(rng, 6, 10) * k
        pier = (np.abs(u - uj) < pw / 2) & (v > c0 - 6 * k) & (v < c0 + plen)
        cv.lc[pier] = ROAD
        piers.append((uj, plen, pw))
    cv.styles[ROAD] = {"colour": (150, 148, 140)}
    sea = cv.lc == WATER
    for uj, plen, pw in piers:
        for sgn in (-1, 1):
            if rng.random() < 0.75:
                L = _u(rng, 22, 44) * k
                x, y = cv.to_image(uj + sgn * (pw / 2 + 0.14 * L + 2.5 * k), c0 + _u(rng, 0.3, 0.7) * plen + 6 * k,
                                   S / 2, S / 2, ang)
                col = ((200, 70, 60), (60, 70, 90), (220, 220, 220), (70, 110, 150))[int(rng.integers(4))]
                cv.add(ship(x, y, ang + math.pi / 2 + (math.pi if rng.random() < 0.5 else 0), L, col), sea)
    cv.scatter(lambda x, y: ship(x, y, _u(rng, 0, 2 * math.pi), _u(rng, 14, 30) * k, (225, 225, 225)),
               int(rng.integers(0, 3)), sea)
    if rng.random() < 0.7:
        r = _u(rng, 6, 11) * k
        cv.scatter(lambda x, y: storage_tank(x, y, r), int(rng.integers(1, 6)), land, gap=3 * k)
    cv.scatter(lambda x, y: building(x, y, ang, _u(rng, 24, 44) * k, _u(rng, 14, 24) * k,
                                     _ROOFS_BIG[int(rng.integers(len(_ROOFS_BIG)))], stripes=int(rng.integers(0, 4))),
               int(rng.integers(1, 4)), land, gap=3 * k)
    cv.scatter(lambda x, y: vehicle(x, y, ang, 8 * k, _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]),
               int(rng.integers(0, 4)), land)


def _fields(cv: Canvas, ang: float, n_u=(3, 6), n_v=(3, 6)) -> tuple[np.ndarray, np.ndarray, list, list]:
    S, rng = cv.S, cv.rng
    u, v = cv.frame(S / 2, S / 2, ang)
    ucuts = sorted(rng.uniform(-0.72 * S, 0.72 * S, int(rng.integers(*n_u))).tolist())
    vcuts = sorted(rng.uniform(-0.72 * S, 0.72 * S, int(rng.integers(*n_v))).tolist())
    cv.styles[FARMLAND] = {"u": u, "v": v, "ucuts": ucuts, "vcuts": vcuts}
    return u, v, ucuts, vcuts


def _farmland(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    ang = _u(rng, 0, math.pi)
    u, v, ucuts, vcuts = _fields(cv, ang)
    cv.lc[:] = FARMLAND
    road = None
    if rng.random() < 0.6:
        c = ucuts[int(rng.integers(len(ucuts)))]
        road = np.abs(u - c) < 3.5 * k
        cv.lc[road] = ROAD
        cv.styles[ROAD] = {"colour": (120, 112, 100)}
    if rng.random() < 0.4:
        c = vcuts[int(rng.integers(len(vcuts)))]
        trees = (np.abs(v - c) < (3 + 3 * _noise(rng, S, 12)) * k) & (cv.lc == FARMLAND)
        cv.lc[trees] = FOREST
    field_mask = cv.lc == FARMLAND
    if road is not None:
        for _ in range(int(rng.integers(0, 3))):
            p = cv.sample_point(road)
            if p:
                off = (8 + _u(rng, 0, 6)) * k * (1 if rng.random() < 0.5 else -1)
                x, y = p[0] - off * math.sin(ang), p[1] + off * math.cos(ang)
                cv.add(building(x, y, ang, _u(rng, 10, 16) * k, _u(rng, 8, 12) * k,
                                _ROOFS_HOUSE[int(rng.integers(len(_ROOFS_HOUSE)))], ridge=True), field_mask)
        if rng.random() < 0.5:
            p = cv.sample_point(road)
            if p:
                cv.add(vehicle(p[0], p[1], ang + math.pi / 2, 9 * k, (40, 120, 60)), road)


def _forest(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.lc[:] = FOREST
    cv.bg = "meadow"
    clearing = None
    if rng.random() < 0.5:
        clearing = _noise(rng, S, 3) > _u(rng, 0.72, 0.82)
        cv.lc[clearing] = BACKGROUND
    if rng.random() < 0.5:
        ang = _u(rng, 0, math.pi)
        u, v = cv.frame(S / 2, S / 2, ang)
        track = np.abs(v - 12 * k * np.sin(u / (30 * k) + _u(rng, 0, 6))) < 2.2 * k
        cv.lc[track] = BARE
        cv.styles[BARE] = {"kind": "dirt"}
    if clearing is not None and clearing.any() and rng.random() < 0.5:
        p = cv.sample_point(clearing)
        if p:
            cv.add(building(p[0], p[1], _u(rng, 0, math.pi), _u(rng, 10, 15) * k, _u(rng, 8, 11) * k,
                            _ROOFS_HOUSE[int(rng.integers(len(_ROOFS_HOUSE)))], ridge=True), clearing)


def _lattice(start: float, step: float, half: float) -> list[float]:
    """Positions start + k * step (k any integer) inside [-half, half)."""
    first = start - step * math.ceil((start + half) / step)
    return np.arange(first, half, step).tolist()


def _residential(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.bg = "lawn"
    ang = _u(rng, -0.4, 0.4) + (math.pi / 2 if rng.random() < 0.5 else 0.0)
    u, v = cv.frame(S / 2, S / 2, ang)
    sp = _u(rng, 56, 76) * k
    rw = _u(rng, 6, 8) * k
    ou, ov = _u(rng, 0, sp), _u(rng, 0, sp)
    road_u = np.mod(u - ou, sp) < rw
    road_v = np.mod(v - ov, sp) < rw
    road = road_u | road_v
    cv.lc[road] = ROAD
    for _ in range(int(rng.integers(2, 9))):
        p = cv.sample_point(~road)
        if p:
            yy, xx = _grid(S)
            r = _u(rng, 3, 7) * k
            tree = ((xx - p[0]) ** 2 + (yy - p[1]) ** 2 < r * r) & ~road
            cv.lc[tree] = FOREST
    free = cv.lc == BACKGROUND
    if rng.random() < 0.5:  # courts first: the houses fill the lawns
        cv.scatter(lambda x, y: tennis_court(x, y, ang, _u(rng, 26, 32) * k), int(rng.integers(1, 3)), free,
                   tries=20, gap=2 * k)
    hs = _u(rng, 17, 21) * k
    # house lattice aligned with the blocks
    half = 0.75 * S
    for a in _lattice(ou + rw + hs / 2, hs, half):
        for b in _lattice(ov + rw + hs / 2, hs, half):
            if rng.random() < 0.18:
                continue
            x, y = cv.to_image(a + _u(rng, -1.5, 1.5) * k, b + _u(rng, -1.5, 1.5) * k, S / 2, S / 2, ang)
            if not (0 <= x < S and 0 <= y < S):
                continue
            shp = building(x, y, ang, _u(rng, 10, 14) * k, _u(rng, 8, 11) * k,
                           _ROOFS_HOUSE[int(rng.integers(len(_ROOFS_HOUSE)))], ridge=True)
            if cv.add(shp, free, gap=1.0) and rng.random() < 0.12:
                px, py = cv.to_image(a, b + 0.5 * hs, S / 2, S / 2, ang)
                cv.add(swimming_pool(px, py, ang, 6.5 * k), free, gap=0.5)
    for _ in range(int(rng.integers(2, 9))):
        p = cv.sample_point(road)
        if p:
            iy, ix = min(S - 1, int(p[1])), min(S - 1, int(p[0]))
            a = ang + (math.pi / 2 if road_u[iy, ix] and not road_v[iy, ix] else 0.0)
            cv.add(vehicle(p[0], p[1], a, 7 * k, _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]), road)


def _industrial(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.bg = "concrete"
    ang = _u(rng, 0, math.pi)
    u, v = cv.frame(S / 2, S / 2, ang)
    r1 = np.abs(v - _u(rng, -0.3, 0.3) * S) < 5 * k
    road = r1 | ((np.abs(u - _u(rng, -0.3, 0.3) * S) < 5 * k) if rng.random() < 0.6 else np.zeros_like(r1))
    cv.lc[road] = ROAD
    free = cv.lc == BACKGROUND
    lot = None
    if rng.random() < 0.7:
        p = cv.sample_point(free)
        if p:
            lu, lv = _u(rng, 40, 60) * k, _u(rng, 26, 36) * k
            pu, pv = cv.frame(p[0], p[1], ang)
            lot = (np.abs(pu) < lu / 2) & (np.abs(pv) < lv / 2) & free
            cv.lc[lot] = ROAD
            cv.paints.append((lot, (120, 120, 124), 0.05))
            for i in range(int(rng.integers(3, 10))):
                row, col = divmod(i, 5)
                x, y = cv.to_image(-lu / 2 + 6 * k + col * 9 * k, -lv / 2 + 7 * k + row * 12 * k, p[0], p[1], ang)
                cv.add(vehicle(x, y, ang + math.pi / 2, 8 * k, _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]),
                       lot, gap=0.5)
    free = cv.lc == BACKGROUND
    cv.scatter(lambda x, y: building(x, y, ang, _u(rng, 30, 66) * k, _u(rng, 24, 44) * k,
                                     _ROOFS_BIG[int(rng.integers(len(_ROOFS_BIG)))], stripes=int(rng.integers(3, 8))),
               int(rng.integers(2, 6)), free, tries=25, gap=3 * k)
    r = _u(rng, 6, 12) * k
    cv.scatter(lambda x, y: storage_tank(x, y, r), int(rng.integers(2, 9)), free, tries=25, gap=3 * k)


def _river(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.bg = "meadow"
    ang = _u(rng, 0, math.pi)
    u, v = cv.frame(S / 2, S / 2, ang)
    A, P, ph = _u(rng, 8, 30) * k, _u(rng, 140, 280) * k, _u(rng, 0, 2 * math.pi)
    w = _u(rng, 20, 36) * k
    off = _u(rng, -0.12, 0.12) * S
    centre = off + A * np.sin(2 * np.pi * u / P + ph)
    water = np.abs(v - centre) < w / 2 + (_noise(rng, S, 8) - 0.5) * 4 * k
    if rng.random() < 0.5:
        fu, fv, _, _ = _fields(cv, ang + _u(rng, -0.3, 0.3), (2, 4), (2, 4))
        sgn = 1 if rng.random() < 0.5 else -1
        cv.lc[sgn * (v - centre) > w / 2 + 12 * k] = FARMLAND
    woods = (_fbm(rng, S) > _u(rng, 0.55, 0.65)) & (cv.lc == BACKGROUND)
    cv.lc[woods] = FOREST
    cv.lc[water] = WATER
    cv.styles[WATER] = {"colour": (46, 86, 98)}
    if rng.random() < 0.5:
        ub = _u(rng, -0.25, 0.25) * S
        cb = off + A * math.sin(2 * math.pi * ub / P + ph)
        bridge = (np.abs(u - ub) < 4 * k) & (np.abs(v - cb) < w / 2 + 10 * k)
        cv.lc[bridge] = ROAD
        cv.styles[ROAD] = {"colour": (130, 128, 124)}
        for _ in range(int(rng.integers(0, 3))):
            p = cv.sample_point(bridge)
            if p:
                cv.add(vehicle(p[0], p[1], ang + math.pi / 2, 6 * k, _CAR_COLOURS[int(rng.integers(6))]), bridge)
    river = cv.lc == WATER
    for _ in range(int(rng.integers(0, 3))):
        us = _u(rng, -0.35, 0.35) * S
        vs = off + A * math.sin(2 * math.pi * us / P + ph)
        slope = A * 2 * math.pi / P * math.cos(2 * math.pi * us / P + ph)
        x, y = cv.to_image(us, vs, S / 2, S / 2, ang)
        cv.add(ship(x, y, ang + math.atan(slope) + (math.pi if rng.random() < 0.5 else 0), _u(rng, 12, 20) * k,
                    (225, 225, 225)), river)


def _desert(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.lc[:] = BARE
    cv.styles[BARE] = {"kind": "sand", "angle": _u(rng, 0, math.pi), "period": _u(rng, 9, 18)}
    if rng.random() < 0.3:
        ang = _u(rng, 0, math.pi)
        u, v = cv.frame(S / 2, S / 2, ang)
        road = np.abs(v - _u(rng, -0.3, 0.3) * S) < 2.5 * k
        cv.lc[road] = ROAD
        cv.styles[ROAD] = {"colour": (100, 96, 92)}
        if rng.random() < 0.5:
            p = cv.sample_point(road)
            if p:
                cv.add(vehicle(p[0], p[1], ang, 8 * k, _CAR_COLOURS[int(rng.integers(6))]), road)


_SCENE_FUNCS = {"airport": _airport, "harbor": _harbor, "farmland": _farmland, "forest": _forest,
                "residential area": _residential, "industrial area": _industrial, "river": _river,
                "desert": _desert}


def render_scene(scene: str, size: int = 224, rng: np.random.Generator | int = 0):
    """Render one scene. Returns (RGB uint8 [S,S,3], label map uint8 [S,S] with :data:`OVSS_CLASSES` indices,
    objects: list of {category, box [x1, y1, x2, y2]})."""
    if scene not in _SCENE_FUNCS:
        raise ValueError(f"unknown scene {scene!r}; choose one of {', '.join(SCENES)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    cv = Canvas(size, rng)
    _SCENE_FUNCS[scene](cv)
    return cv.render()


def land_cover_fractions(label: np.ndarray) -> dict[str, float]:
    counts = np.bincount(label.ravel(), minlength=len(OVSS_CLASSES)) / label.size
    return {name: float(counts[c]) for c, name in LAND_COVER_NAMES.items() if counts[c] > 0}


# ------------------------------------------------------------------------------------------------ world

class _Tar:
    """Deterministic webdataset shards (fixed mtime, owner and mode)."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.n, self.tar, self.paths = 0, None, []

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        if self.tar is None or self.n % self.shard_size == 0:
            self.close()
            path = self.folder / f"shard-{len(self.paths):06d}.tar"
            self.paths.append(path)
            self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        for ext, data in fields.items():
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
            self.tar.addfile(ti, io.BytesIO(data))
        self.n += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _scene_order(n: int, rng: np.random.Generator) -> list[str]:
    """Balanced scene classes in a seeded random order."""
    reps = -(-n // len(SCENES))
    order = np.tile(np.arange(len(SCENES)), reps)[:n]
    rng.shuffle(order)
    return [SCENES[i] for i in order]


def synth_world(out: str | Path, n: int = 512, seed: int = 0, size: int = 224, n_test: int | None = None,
                shard_size: int = 1000, overwrite: bool = False, progress: bool = True) -> dict:
    """Write a synthetic RS world to ``out`` (see the module doc for the layout); return the summary that is also
    written to ``out/world.json``. ``n`` training images, ``n_test`` held-out images (default: max(24, n // 4))
    for classification, retrieval and OVSS."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 64:
        raise ValueError(f"size must be >= 64 px, got {size}")
    n_test = max(3 * len(SCENES), n // 4) if n_test is None else n_test
    out = Path(out)
    parts = ("mgrs", "rs5m", "cls", "retrieval", "ovss", "captions.csv", "world.json")
    existing = [p for p in parts if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass overwrite=True (--overwrite)")
    for p in existing:
        shutil.rmtree(out / p) if (out / p).is_dir() else (out / p).unlink()
    for d in ("mgrs/global_imgs", "rs5m", "cls/images", "retrieval/images", "ovss/img_dir/val", "ovss/ann_dir/val"):
        (out / d).mkdir(parents=True, exist_ok=True)

    cat_ids = assign_category_ids(OBJECT_CATEGORIES)
    captioner = TemplateCaptioner()
    root = np.random.SeedSequence(seed)
    train_ss, test_ss, order_ss = root.spawn(3)
    train_scenes = _scene_order(n, np.random.default_rng(order_ss))
    test_scenes = [SCENES[i % len(SCENES)] for i in range(n_test)]

    records, cap_rows = [], []
    shards = _Tar(out / "rs5m", shard_size)
    n_objects = 0
    try:
        for i, (scene, ss) in enumerate(tqdm(list(zip(train_scenes, train_ss.spawn(n))), desc="synth train",
                                             unit="img", disable=not progress)):
            rgb, lab, objs = render_scene(scene, size, np.random.default_rng(ss))
            name = f"{i:06d}.jpg"
            caps = captioner(objs, size, size, scene=scene, land_cover=land_cover_fractions(lab), key=name)
            data = _jpeg(rgb)
            (out / "mgrs/global_imgs" / name).write_bytes(data)
            for o in objs:
                o["category_id"] = cat_ids[o["category"]]
            records.append(mgrs_record(name, caps, objs, size, size, scene=scene))  # relative to global_imgs/
            cap_rows.append((f"mgrs/global_imgs/{name}", caps["global_caption"]))
            shards.write(f"{i:06d}", {"img_content": data, "img_name": name.encode(),
                                      "caption": caps["global_caption"].encode("utf-8")})
            n_objects += len(objs)
    finally:
        shards.close()
    write_mgrs_json(records, out / "mgrs/text_info.json")
    _write_csv(out / "captions.csv", ("filepath", "title"), cap_rows)

    cls_rows, ret_rows = [], []
    ovss_counts = np.zeros(len(OVSS_CLASSES), np.int64)
    for i, (scene, ss) in enumerate(tqdm(list(zip(test_scenes, test_ss.spawn(n_test))), desc="synth test",
                                         unit="img", disable=not progress)):
        rgb, lab, objs = render_scene(scene, size, np.random.default_rng(ss))
        stem = f"{i:06d}"
        data = _jpeg(rgb)
        (out / "cls/images" / f"{stem}.jpg").write_bytes(data)
        (out / "retrieval/images" / f"{stem}.jpg").write_bytes(data)
        (out / "ovss/img_dir/val" / f"{stem}.png").write_bytes(_png(rgb))
        (out / "ovss/ann_dir/val" / f"{stem}.png").write_bytes(_png(lab))
        ovss_counts += np.bincount(lab.ravel(), minlength=len(OVSS_CLASSES))
        caps = captioner(objs, size, size, scene=scene, land_cover=land_cover_fractions(lab), key=f"test-{stem}")
        cls_rows.append((f"images/{stem}.jpg", SCENES.index(scene)))
        ret_rows.append((f"images/{stem}.jpg", caps["global_caption"]))
        ret_rows.append((f"images/{stem}.jpg", caps["detailed_caption"]))
    _write_csv(out / "cls/test.csv", ("filepath", "label"), cls_rows)
    (out / "cls/classnames.txt").write_text("\n".join(SCENES) + "\n", encoding="utf-8")
    _write_csv(out / "retrieval/test.csv", ("filepath", "title"), ret_rows)
    (out / "ovss/classes.txt").write_text("\n".join(",".join(c) for c in OVSS_CLASSES) + "\n", encoding="utf-8")

    summary = {
        "generator": "farslip.build.synth", "version": 1, "seed": seed, "size": size,
        "train_images": n, "test_images": n_test, "objects": n_objects,
        "scenes": list(SCENES),
        "train_scene_counts": {s: train_scenes.count(s) for s in SCENES},
        "test_scene_counts": {s: test_scenes.count(s) for s in SCENES},
        "categories": cat_ids,
        "ovss_classes": [list(c) for c in OVSS_CLASSES],
        "ovss_background_index": 0,
        "ovss_pixel_share": {OVSS_CLASSES[c][0]: round(float(v) / max(1, ovss_counts.sum()), 4)
                             for c, v in enumerate(ovss_counts)},
        "paths": {
            "mgrs": "mgrs/text_info.json", "mgrs_images": "mgrs/global_imgs",
            "rs5m": [p.relative_to(out).as_posix() for p in shards.paths],
            "captions_csv": "captions.csv",
            "cls_csv": "cls/test.csv", "cls_classnames": "cls/classnames.txt",
            "retrieval_csv": "retrieval/test.csv",
            "ovss_images": "ovss/img_dir/val", "ovss_labels": "ovss/ann_dir/val", "ovss_classes": "ovss/classes.txt",
        },
        "notes": "Objects are 5-90 px at 224 px; FarSLIP stage 2's default 64x64 px minimum region area drops most "
                 "of them, so lower it when training on this world.",
    }
    tmp = out / ".world.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "world.json")
    return summary


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
