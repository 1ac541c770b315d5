"""``farslip segment`` on a large generated GeoTIFF: pixels/s and the peak RSS of the command's process.

The raster (3-band uint8, tiled, deflate, UTM georeference) is generated tile by tile so writing it needs no more
memory than a tile. The command runs as a child process (``python -m farslip segment ...``); its peak RSS is the
``ru_maxrss`` that ``os.wait4`` returns for exactly that child. Pixels/s: raster pixels over the seconds the command
reports for the segmentation itself (reading, windows, writing, preview), and over the child's whole wall time
(interpreter start and model loading included).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import emit, run_child, run_measured

CLASSES = ["building,roof", "road", "water,river", "tree,forest", "farmland"]


def write_raster(path: Path, size: int, tile: int = 512) -> float:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    t0 = time.perf_counter()
    prof = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8", tiled=True, blockxsize=tile,
                blockysize=tile, compress="deflate", crs="EPSG:32633",
                transform=from_origin(500000, 4000000, 0.5, 0.5), BIGTIFF="IF_SAFER")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **prof) as dst:
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                h, w = min(tile, size - y), min(tile, size - x)
                yy, xx = np.mgrid[y:y + h, x:x + w].astype(np.float32)
                f = 128 + 90 * np.sin(xx / 173.0) * np.cos(yy / 211.0) + 30 * np.sin((xx + yy) / 37.0)
                f = f + rng.normal(0, 6, f.shape)
                dst.write(np.stack([f, 255 - f, 0.5 * f + 50]).clip(0, 255).astype(np.uint8), window=Window(x, y, w, h))
    return time.perf_counter() - t0


def child_checkpoint(p: dict) -> None:
    import torch

    import farslip

    torch.manual_seed(0)
    model, *_ = farslip.load_model(p["arch"])
    farslip.save_model(model, p["path"])
    emit({"path": p["path"]})


def native_bf16() -> bool:
    from farslip.models.precision import cpu_has_native_bf16

    return bool(cpu_has_native_bf16())


def bf16_run(cmd: list[str], tif: Path, work: Path, fp32: dict, threads: int) -> dict:
    """The same command with the opt-in ``--amp bf16``: speed and how many pixels keep their fp32 class."""
    import numpy as np
    import rasterio

    out_dir = work / "out_bf16"
    r = run_measured(cmd[:cmd.index("--out") + 1] + [str(out_dir)] + cmd[cmd.index("--out") + 2:]
                     + ["--amp", "bf16"], threads)
    summary = json.loads((out_dir / f"{tif.stem}.json").read_text())
    with rasterio.open(work / "out" / f"{tif.stem}.tif") as a, rasterio.open(out_dir / f"{tif.stem}.tif") as b:
        same = sum(int(np.sum(a.read(1, window=w) == b.read(1, window=w))) for _, w in a.block_windows(1))
    return {"segment_s": summary["seconds"], "mpx_per_s": fp32["pixels"] / summary["seconds"] / 1e6,
            "speedup": fp32["segment_s"] / summary["seconds"], "peak_rss_mib": r["child_peak_rss_mib"],
            "agreement": same / fp32["pixels"]}


def run(cfg: dict, log) -> dict:
    work = Path(tempfile.mkdtemp(prefix="farslip-bench-segment-"))
    scale, resampling = cfg["segment_scale"], cfg["segment_resampling"]
    out = {"arch": cfg["segment_arch"], "scale": scale, "resampling": resampling, "runs": {}}
    try:
        ckpt = work / "model.pt"
        run_child("segment_checkpoint", {"arch": cfg["segment_arch"], "path": str(ckpt)}, cfg["threads"])
        for size in cfg["segment_sizes"]:
            tif = work / f"scene{size}.tif"
            gen = write_raster(tif, size)
            log(f"[segment] {size} x {size} raster written in {gen:.1f} s ({tif.stat().st_size / 2**20:.0f} MiB "
                f"on disk); running farslip segment with {cfg['segment_arch']}")
            cmd = [sys.executable, "-m", "farslip", "segment", str(tif), "--checkpoint", str(ckpt),
                   "--classes", *CLASSES, "--out", str(work / "out"), "--no-progress", "--device", cfg["device"]]
            if scale != 1.0:
                cmd += ["--scale", f"{scale:g}", "--resampling", resampling]
            r = run_measured(cmd, cfg["threads"])
            summary = json.loads((work / "out" / f"scene{size}.json").read_text())
            px = size * size
            res = {"pixels": px, "segment_s": summary["seconds"], "wall_s": r["child_wall_s"],
                   "mpx_per_s": px / summary["seconds"] / 1e6, "mpx_per_s_wall": px / r["child_wall_s"] / 1e6,
                   "peak_rss_mib": r["child_peak_rss_mib"], "raster_mib_on_disk": tif.stat().st_size / 2 ** 20,
                   "raster_mib_decoded": 3 * px / 2 ** 20, "command": " ".join(cmd[1:])}
            out["runs"][str(size)] = res
            log(f"[segment] {size}: {res['mpx_per_s']:.2f} Mpx/s ({res['segment_s']:.1f} s), peak RSS "
                f"{res['peak_rss_mib']:.0f} MiB")
            if size == cfg["segment_sizes"][0] and cfg["device"] == "cpu" and cfg["segment_bf16"] \
                    and native_bf16():
                out["bf16"] = bf16_run(cmd, tif, work, res, cfg["threads"])
                log(f"[segment] {size} with --amp bf16: {out['bf16']['mpx_per_s']:.2f} Mpx/s "
                    f"({out['bf16']['speedup']:.2f}x), {100 * out['bf16']['agreement']:.2f}% of pixels as fp32")
            tif.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


CHILDREN = {"segment_checkpoint": child_checkpoint}
