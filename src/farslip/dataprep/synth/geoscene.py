"""A georeferenced scene of the synthetic world: what ``segment``, ``locate`` and the maps are shown on.

A ``grid x grid`` mosaic of rendered scenes (every scene type in turn: harbours and industrial areas bring ships
and storage tanks), written as a tiled RGB GeoTIFF in a UTM zone with a 0.5 m pixel, beside its truth: the land
cover and objects as OVSS class indexes (``scene_labels.tif``, with the class names and a colour table).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .labels import OVSS_CLASSES, SCENES
from .scenes import render_scene

CRS = "EPSG:32633"        # WGS 84 / UTM zone 33N (central Europe)
ORIGIN = (500000.0, 4600000.0)
GSD = 0.5                 # metres per pixel


def write_georeferenced_scene(out: str | Path, tile: int = 96, grid: int = 4, seed: int = 0) -> dict:
    """``out/scene.tif`` and ``out/scene_labels.tif``; returns their paths, size, CRS and the scenes per tile."""
    import rasterio
    from rasterio.transform import from_origin

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    side = tile * grid
    rgb = np.zeros((3, side, side), np.uint8)
    lab = np.zeros((side, side), np.uint8)
    names = []
    rngs = np.random.SeedSequence([seed, 15]).spawn(grid * grid)
    for k, ss in enumerate(rngs):
        scene = SCENES[k % len(SCENES)]
        y, x = divmod(k, grid)
        img, label, _ = render_scene(scene, tile, np.random.default_rng(ss))
        rgb[:, y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = img.transpose(2, 0, 1)
        lab[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile] = label
        names.append(scene)
    profile = dict(driver="GTiff", height=side, width=side, crs=CRS, transform=from_origin(*ORIGIN, GSD, GSD),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    image, truth = out / "scene.tif", out / "scene_labels.tif"
    with rasterio.open(image, "w", count=3, dtype="uint8", photometric="RGB", **profile) as dst:
        dst.write(rgb)
        dst.update_tags(SCENES=json.dumps(names), SOFTWARE="farslip synthetic world")
    with rasterio.open(truth, "w", count=1, dtype="uint8", nodata=255, **profile) as dst:
        dst.write(lab, 1)
        dst.update_tags(CLASS_NAMES=json.dumps([c[0] for c in OVSS_CLASSES]))
        dst.write_colormap(1, {i: tuple(int(v) for v in c) + (255,) for i, c in enumerate(_colours())})
    return {"image": str(image), "labels": str(truth), "size": side, "crs": CRS, "gsd_m": GSD, "tiles": names}


def _colours() -> np.ndarray:
    from matplotlib import colormaps

    return (np.array([colormaps["tab20"](i % 20)[:3] for i in range(len(OVSS_CLASSES))]) * 255).round()
