"""The eight scene recipes: land cover first, then objects, on a :class:`Canvas`."""
from __future__ import annotations

import math

import numpy as np

from .labels import (
    BACKGROUND,
    BARE,
    FARMLAND,
    FOREST,
    LAND_COVER_NAMES,
    OVSS_CLASSES,
    ROAD,
    SCENES,
    WATER,
)
from .objects import (
    airplane,
    building,
    ship,
    storage_tank,
    swimming_pool,
    tennis_court,
    vehicle,
)
from .terrain import CAR_COLOURS, ROOFS_BIG, ROOFS_HOUSE, Canvas, fbm, grid, noise

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
                           CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]), on_apron)


def _harbor(cv: Canvas) -> None:
    S, k, rng = cv.S, cv.k, cv.rng
    cv.bg = "concrete"
    ang = _u(rng, 0, 2 * math.pi)
    u, v = cv.frame(S / 2, S / 2, ang)
    c0 = _u(rng, -0.12, 0.08) * S
    water = v + (noise(rng, S, 4) - 0.5) * 10 * k > c0
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
                                     ROOFS_BIG[int(rng.integers(len(ROOFS_BIG)))], stripes=int(rng.integers(0, 4))),
               int(rng.integers(1, 4)), land, gap=3 * k)
    cv.scatter(lambda x, y: vehicle(x, y, ang, 8 * k, CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]),
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
        trees = (np.abs(v - c) < (3 + 3 * noise(rng, S, 12)) * k) & (cv.lc == FARMLAND)
        cv.lc[trees] = FOREST
    field_mask = cv.lc == FARMLAND
    if road is not None:
        for _ in range(int(rng.integers(0, 3))):
            p = cv.sample_point(road)
            if p:
                off = (8 + _u(rng, 0, 6)) * k * (1 if rng.random() < 0.5 else -1)
                x, y = p[0] - off * math.sin(ang), p[1] + off * math.cos(ang)
                cv.add(building(x, y, ang, _u(rng, 10, 16) * k, _u(rng, 8, 12) * k,
                                ROOFS_HOUSE[int(rng.integers(len(ROOFS_HOUSE)))], ridge=True), field_mask)
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
        clearing = noise(rng, S, 3) > _u(rng, 0.72, 0.82)
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
                            ROOFS_HOUSE[int(rng.integers(len(ROOFS_HOUSE)))], ridge=True), clearing)


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
            yy, xx = grid(S)
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
                           ROOFS_HOUSE[int(rng.integers(len(ROOFS_HOUSE)))], ridge=True)
            if cv.add(shp, free, gap=1.0) and rng.random() < 0.12:
                px, py = cv.to_image(a, b + 0.5 * hs, S / 2, S / 2, ang)
                cv.add(swimming_pool(px, py, ang, 6.5 * k), free, gap=0.5)
    for _ in range(int(rng.integers(2, 9))):
        p = cv.sample_point(road)
        if p:
            iy, ix = min(S - 1, int(p[1])), min(S - 1, int(p[0]))
            a = ang + (math.pi / 2 if road_u[iy, ix] and not road_v[iy, ix] else 0.0)
            cv.add(vehicle(p[0], p[1], a, 7 * k, CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]), road)


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
                cv.add(vehicle(x, y, ang + math.pi / 2, 8 * k, CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]),
                       lot, gap=0.5)
    free = cv.lc == BACKGROUND
    cv.scatter(lambda x, y: building(x, y, ang, _u(rng, 30, 66) * k, _u(rng, 24, 44) * k,
                                     ROOFS_BIG[int(rng.integers(len(ROOFS_BIG)))], stripes=int(rng.integers(3, 8))),
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
    water = np.abs(v - centre) < w / 2 + (noise(rng, S, 8) - 0.5) * 4 * k
    if rng.random() < 0.5:
        fu, fv, _, _ = _fields(cv, ang + _u(rng, -0.3, 0.3), (2, 4), (2, 4))
        sgn = 1 if rng.random() < 0.5 else -1
        cv.lc[sgn * (v - centre) > w / 2 + 12 * k] = FARMLAND
    woods = (fbm(rng, S) > _u(rng, 0.55, 0.65)) & (cv.lc == BACKGROUND)
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
                cv.add(vehicle(p[0], p[1], ang + math.pi / 2, 6 * k, CAR_COLOURS[int(rng.integers(6))]), bridge)
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
                cv.add(vehicle(p[0], p[1], ang, 8 * k, CAR_COLOURS[int(rng.integers(6))]), road)


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


def render_pair(a: tuple, b: tuple, rng: np.random.Generator):
    """Two rendered scenes (:func:`render_scene`'s triples, of different classes) on either side of a wavy
    boundary through the image's middle third: a tile where a harbour meets a forest. Returns the same triple; an
    object is kept when at least 90% of its box lies on its own scene's side (a cut object's pixels stay in the
    label map).

    The world's global captions name both scenes and never say which side is which, so a CLIP trained on them
    learns patch tokens that describe the whole image -- the dense-feature problem FarSLIP's stage 1 addresses."""
    (rgb_a, lab_a, objs_a), (rgb_b, lab_b, objs_b) = a, b
    size = lab_a.shape[0]
    yy, xx = grid(size)
    ang = rng.uniform(0, 2 * math.pi)
    offset = rng.uniform(-size / 6, size / 6)
    wobble = (noise(rng, size, 3) - 0.5) * 0.2 * size
    side_a = (xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang) + wobble > offset
    rgb = np.where(side_a[..., None], rgb_a, rgb_b)
    lab = np.where(side_a, lab_a, lab_b)

    def inside(o, mask):
        x1, y1, x2, y2 = (int(round(c)) for c in o["box"])
        box = mask[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        return box.size > 0 and box.mean() >= 0.9

    objs = [o for o in objs_a if inside(o, side_a)] + [o for o in objs_b if inside(o, ~side_a)]
    return rgb, lab, objs
