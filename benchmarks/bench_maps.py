"""``farslip locate`` and the vector export on a large generated GeoTIFF: pixels/s and peak RSS of each command.

* locate: ``python -m farslip locate "storage tank" ship scene.tif`` as a child process (two queries, heatmap
  COGs, regions GeoPackage, preview). ``--maps-valid N`` leaves only an N x N square of the scene valid (the rest
  nodata, as the collar of a satellite scene): every pixel of the raster is still read, written into the COGs and
  polygonised, but only the valid square's windows are encoded -- how a ViT-B-16's memory on a 20,000 px scene
  is measured on a 2-core CPU in minutes rather than hours.
* vectors: the polygons of a generated class map of the same size (regions of every size, holes, a confidence
  raster) written to a GeoPackage by ``farslip.infer.vectors.vectorize_class_map`` in a child process.
* web map: the HTML page (``farslip view``) of that class map, its confidence and its polygons: size and time.

Peak RSS is ``ru_maxrss`` of exactly that child (``os.wait4`` in ``launch.py``, so the parent's RSS is not counted).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_segment import child_checkpoint, write_raster
from common import emit, run_child, run_measured

QUERIES = ["storage tank", "ship"]


def mask_outside(path: Path, valid: int, tile: int = 512) -> None:
    """Set everything outside the top-left ``valid`` x ``valid`` square to nodata (0), tile by tile."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
        for y in range(0, dst.height, tile):
            for x in range(0, dst.width, tile):
                h, w = min(tile, dst.height - y), min(tile, dst.width - x)
                if y + h <= valid and x + w <= valid:
                    continue
                win = Window(x, y, w, h)
                a = dst.read(window=win)
                yy, xx = np.mgrid[y:y + h, x:x + w]
                a[:, (yy >= valid) | (xx >= valid)] = 0
                dst.write(a, window=win)


def write_class_map(path: Path, conf_path: Path, size: int, classes: int = 5) -> None:
    """A class-map COG and its confidence COG with smooth regions of every size (what segment produces)."""
    import numpy as np
    import rasterio

    from farslip.infer import cog

    class Like:
        height = width = size
        crs = rasterio.crs.CRS.from_epsg(32633)
        transform = rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5)

    names = [f"class{i}" for i in range(classes)]
    palette = np.array([[40 * i, 255 - 40 * i, 120] for i in range(classes)])
    with cog.class_map_writer(path, Like, names, palette) as dst, \
            cog.score_writer(conf_path, Like, ["confidence"], kind="confidence") as cdst:
        for _, win in dst.block_windows(1):
            yy, xx = np.mgrid[win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width]
            f = np.sin(xx / 301.0) * np.cos(yy / 257.0) + 0.5 * np.sin((xx + 2 * yy) / 71.0)
            dst.write(((f + 1.5) / 3 * classes).clip(0, classes - 1).astype(np.uint8), 1, window=win)
            cdst.write((0.5 + 0.4 * np.abs(f) / 1.5).astype(np.float32), 1, window=win)


def child_vectorize(p: dict) -> None:
    from farslip.infer.vectors import vectorize_class_map

    t0 = time.perf_counter()
    s = vectorize_class_map(p["class_map"], p["out"], confidence=p["confidence"], min_area=p["min_area"],
                            simplify=p["simplify"])
    emit({"seconds": time.perf_counter() - t0, "polygons": s.polygons, "dropped_small": s.dropped_small})


def run(cfg: dict, log) -> dict:
    work = Path(tempfile.mkdtemp(prefix="farslip-bench-maps-"))
    size, valid = cfg["maps_size"], cfg.get("maps_valid")
    out = {"arch": cfg["maps_arch"], "size": size, "valid_side": valid}
    try:
        ckpt = work / "model.pt"
        run_child("maps_checkpoint", {"arch": cfg["maps_arch"], "path": str(ckpt)}, cfg["threads"])
        tif = work / "scene.tif"
        gen = write_raster(tif, size)
        if valid:
            mask_outside(tif, valid)
        log(f"[maps] {size} x {size} raster written in {gen:.0f} s; farslip locate with {cfg['maps_arch']}"
            + (f" (valid square {valid} x {valid})" if valid else ""))
        cmd = [sys.executable, "-m", "farslip", "locate", *QUERIES, str(tif), "--checkpoint", str(ckpt),
               "--out", str(work / "out"), "--no-progress", "--device", cfg["device"]]
        r = run_measured(cmd, cfg["threads"])
        summary = json.loads((work / "out" / "scene.locate.json").read_text())
        px = size * size
        encoded = (valid or size) ** 2
        out["locate"] = {"pixels": px, "encoded_pixels": encoded, "seconds": summary["seconds"],
                         "wall_s": r["child_wall_s"], "mpx_per_s": px / summary["seconds"] / 1e6,
                         "encoded_mpx_per_s": encoded / summary["seconds"] / 1e6,
                         "peak_rss_mib": r["child_peak_rss_mib"], "regions": sum(q["regions"] for q in
                                                                                 summary["queries"]),
                         "command": " ".join(cmd[1:])}
        log(f"[maps] locate: {out['locate']['seconds']:.0f} s ({out['locate']['encoded_mpx_per_s']:.3f} encoded "
            f"Mpx/s), peak RSS {out['locate']['peak_rss_mib']:.0f} MiB")
        tif.unlink()
        shutil.rmtree(work / "out")
        if not cfg.get("maps_vectors", True):
            return out
        cm, conf = work / "classes.tif", work / "confidence.tif"
        t0 = time.perf_counter()
        write_class_map(cm, conf, size)
        log(f"[maps] {size} x {size} class map written in {time.perf_counter() - t0:.0f} s; vectorising")
        v = run_child("maps_vectorize", {"class_map": str(cm), "confidence": str(conf), "out": str(work / "v.gpkg"),
                                         "min_area": 1.0, "simplify": 0.5}, cfg["threads"])
        out["vectors"] = {"pixels": px, "seconds": v["seconds"], "mpx_per_s": px / v["seconds"] / 1e6,
                          "polygons": v["polygons"], "dropped_small": v["dropped_small"],
                          "peak_rss_mib": v["child_peak_rss_mib"], "gpkg_mib": (work / "v.gpkg").stat().st_size / 2**20}
        log(f"[maps] vectors: {v['polygons']} polygons in {v['seconds']:.0f} s ({out['vectors']['mpx_per_s']:.1f} "
            f"Mpx/s), peak RSS {v['child_peak_rss_mib']:.0f} MiB")
        w = run_child("maps_webmap", {"rasters": [str(cm), str(conf)], "vectors": [str(work / "v.gpkg")],
                                      "out": str(work / "map.html")}, cfg["threads"])
        out["webmap"] = {"pixels": px, "seconds": w["seconds"], "mib": w["bytes"] / 2 ** 20,
                         "polygons_shown": w["polygons_shown"], "peak_rss_mib": w["child_peak_rss_mib"]}
        log(f"[maps] web map of the class map, confidence and polygons: {out['webmap']['mib']:.1f} MiB in "
            f"{w['seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def child_webmap(p: dict) -> None:
    from farslip.infer.webmap import write_html

    t0 = time.perf_counter()
    page = write_html(p["out"], rasters=p["rasters"], vectors=p["vectors"])
    text = page.read_text()
    emit({"seconds": time.perf_counter() - t0, "bytes": page.stat().st_size,
          "polygons_shown": text.count('"type": "Feature"')})


CHILDREN = {"maps_checkpoint": child_checkpoint, "maps_vectorize": child_vectorize, "maps_webmap": child_webmap}
