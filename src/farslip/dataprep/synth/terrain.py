"""Terrain and textures: value noise, land-cover styles, and the canvas a scene is drawn on."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .labels import BACKGROUND, BARE, FARMLAND, FOREST, OBJECT_LABEL, ROAD, WATER
from .objects import Shape

BG_STYLES = {"dry grass": (150, 146, 104), "lawn": (98, 134, 70), "concrete": (158, 155, 147),
              "meadow": (112, 140, 78)}
ROOFS_HOUSE = ((156, 72, 58), (120, 118, 124), (84, 78, 78), (182, 112, 72), (140, 96, 80))
ROOFS_BIG = ((196, 196, 200), (96, 124, 164), (214, 214, 210), (150, 160, 168))
CAR_COLOURS = ((200, 40, 40), (40, 60, 170), (235, 235, 235), (30, 30, 30), (170, 170, 175), (220, 200, 60))
FIELD_COLOURS = np.array([(124, 160, 70), (76, 122, 52), (192, 176, 100), (146, 112, 76), (172, 162, 118),
                           (104, 140, 60)], np.float32)


# ------------------------------------------------------------------------------------------------ textures

@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [0, 1] (a random cells x cells grid, bicubically enlarged)."""
    a = rng.random((cells, cells), dtype=np.float32)
    return np.clip(np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)), 0.0, 1.0)


def fbm(rng: np.random.Generator, size: int, octaves=((3, 0.45), (6, 0.3), (12, 0.15), (24, 0.1))) -> np.ndarray:
    return sum(w * noise(rng, size, c) for c, w in octaves)


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
        yy, xx = grid(self.S)
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
            tex = np.asarray(colour, np.float32) * (1 - amp / 2 + amp * noise(rng, S, 24))[..., None]
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
            base = np.asarray(BG_STYLES[self.bg], np.float32)
            t = 0.82 + 0.36 * fbm(rng, S)
            return base * t[..., None]
        if cls == WATER:
            base = np.asarray(st.get("colour", (30, 64, 98)), np.float32)
            yy, xx = grid(S)
            t = 0.9 + 0.2 * noise(rng, S, 4) + 0.03 * np.sin(0.9 * yy / self.k + 4 * noise(rng, S, 6))
            return base * t[..., None]
        if cls == FOREST:
            base = np.asarray((36, 76, 36), np.float32)
            canopy = noise(rng, S, max(8, int(S / 5))) * 0.6 + noise(rng, S, max(4, int(S / 12))) * 0.4
            t = 0.55 + 0.9 * canopy ** 1.5
            return base * t[..., None]
        if cls == FARMLAND:
            u, v = st["u"], st["v"]
            iu = np.digitize(u, st["ucuts"])
            iv = np.digitize(v, st["vcuts"])
            pid = iu * (len(st["vcuts"]) + 1) + iv
            n = (len(st["ucuts"]) + 1) * (len(st["vcuts"]) + 1)
            colours = FIELD_COLOURS[rng.integers(0, len(FIELD_COLOURS), n)]
            period = rng.uniform(3.0, 7.0, n).astype(np.float32) * self.k
            along_u = rng.random(n) < 0.5
            coord = np.where(along_u[pid], u, v)
            stripes = 0.9 + 0.1 * np.sin(2 * np.pi * coord / period[pid])
            t = stripes * (0.92 + 0.16 * noise(rng, S, 10))
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
                return np.asarray((150, 120, 86), np.float32) * (0.85 + 0.3 * fbm(rng, S))[..., None]
            u, _ = self.frame(S / 2, S / 2, st.get("angle", 0.3))
            period = st.get("period", 14.0) * self.k
            dunes = np.sin(2 * np.pi * u / period + 5 * noise(rng, S, 5))
            t = 0.9 + 0.12 * fbm(rng, S) + 0.07 * dunes
            rocks = noise(rng, S, 9) > 0.78
            img = np.asarray((210, 180, 130), np.float32) * t[..., None]
            img[rocks] *= 0.8
            return img
        if cls == ROAD:
            base = np.asarray(st.get("colour", (92, 92, 96)), np.float32)
            return base * (0.93 + 0.14 * noise(rng, S, 40))[..., None]
        return np.full((S, S, 3), 128, np.float32)


