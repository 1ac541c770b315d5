"""``farslip segment``: open-vocabulary land-cover maps of rasters of any size, GeoTIFF in, GeoTIFF out.

The raster is processed tile by tile (``tiling.py``: each tile encodes the windows of the whole raster's grid that
touch it, so the map equals one pass over the whole raster); inside a tile the OVSS protocol of the evaluation
(dense features in sliding windows, 80-template text embeddings, synonym max, CLS-bias, threshold -> background)
runs at the model's own window size. Memory is bounded by the tile size, not the raster size.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine.colours import palette as make_palette
from ..engine import (OVSS_TEMPLATES, class_scores, model_input_size, name_embeddings, normaliser, predict_classes,
                      query_table, sliding_window_logits)
from .common import load_for_inference, parse_classes
from .raster import Window, class_map_writer, open_raster, read_rgb, read_thumbnail, read_valid
from .tiling import AxisTile, axis_tiles, tile_boxes, tile_step

NODATA = 255


@dataclass
class SegmentOptions:
    attn: str = "segearth"
    cls_lambda: float = -0.3
    logit_scale: float = 50.0
    threshold: float = 0.0              # best class probability under this -> background class
    background_index: int = 0
    scale: float = 1.0                  # resample the raster by this factor before the windows (e.g. to match GSD)
    window: int | None = None           # default: the model's input size
    stride: int | None = None           # default: half the window
    block: int = 1024                   # output pixels per tile side (rounded to whole window strides)
    window_batch_size: int | None = None  # default: 64 on a GPU, about 1024 token rows on the CPU
    bands: Sequence[int] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    preview_size: int = 1024
    progress: bool = True
    gdal_cache_mb: int = 256            # GDAL block cache; its default (5% of RAM) is what grows on huge rasters
    amp: str | None = None              # None: fp16 autocast on CUDA, fp32 on CPU; "bf16": ~3x on bf16 CPUs; "off"


@dataclass
class SegmentResult:
    image: str
    geotiff: str
    preview: str
    classes: list[str]
    pixels: int
    seconds: float
    class_fractions: dict[str, float] = field(default_factory=dict)


def segment(images: Sequence[str | Path] | str | Path, classes: Sequence[str] | None = None, *,
            checkpoint: str | Path | None = None, model=None, tokenizer=None, classes_file: str | Path | None = None,
            out: str | Path = "segmentations", arch: str | None = None, device: str = "auto",
            options: SegmentOptions | None = None, **overrides) -> list[SegmentResult]:
    """Segment each image into ``classes`` (``"building,roof"`` = one class with synonyms); write
    ``OUT/<stem>.tif`` (class indexes, input georeference kept, 255 = nodata) and ``OUT/<stem>.png`` (preview)."""
    opts = options or SegmentOptions()
    for k, v in overrides.items():
        setattr(opts, k, v)
    images = [images] if isinstance(images, (str, Path)) else list(images)
    class_syn = parse_classes(classes, classes_file)
    names = [c[0] for c in class_syn]
    if not 0 <= opts.background_index < len(names):
        raise ValueError(f"background index {opts.background_index} outside the {len(names)} classes")
    if model is None:
        if checkpoint is None:
            raise ValueError("segment needs a checkpoint (or a model and tokenizer)")
        model, _, tokenizer = load_for_inference(checkpoint, arch, device)
    queries, query_to_class = query_table(class_syn)
    with torch.no_grad():
        # once per run, in fp32 whatever amp; 64 prompts a batch keeps the text tower's activations (~0.6 GB at 256
        # for ViT-B) under the peak the tiles reach
        text = name_embeddings(model, tokenizer, queries, OVSS_TEMPLATES, batch_size=64)
    results = []
    with _bounded_gdal_cache(opts.gdal_cache_mb):
        for image in images:
            results.append(_segment_one(Path(image), model, text, query_to_class, names, Path(out), opts))
    return results


def _bounded_gdal_cache(megabytes: int):
    """GDAL's block cache capped at ``megabytes`` while we read and write (unless GDAL_CACHEMAX is set by the
    user). By default GDAL may cache up to 5% of the machine's RAM of raster blocks, which on a 20,000 x 20,000
    scene is most of the process's peak memory; the blockwise loop reads and writes each block once, so a small
    cache costs nothing."""
    import os

    import rasterio

    if "GDAL_CACHEMAX" in os.environ or not megabytes:
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=int(megabytes))


def _segment_one(path: Path, model, text, query_to_class, names, out: Path, opts: SegmentOptions) -> SegmentResult:
    t0 = time.perf_counter()
    r = open_raster(path, opts.bands, opts.percentiles)
    window = opts.window or model_input_size(model)
    stride = opts.stride or window // 2
    H, W = r.height, r.width
    Hs, Ws = max(1, round(H * opts.scale)), max(1, round(W * opts.scale))  # the grid the windows slide on
    step = tile_step(opts.block, stride, opts.scale)
    row_tiles = axis_tiles(H, Hs, window, stride, step)
    col_tiles = axis_tiles(W, Ws, window, stride, step)
    colours = _class_colours(names)
    tif = out / f"{path.stem}.tif"
    counts = np.zeros(len(names), np.int64)
    try:
        dst = class_map_writer(tif, r, names, colours, NODATA)
        with dst, tqdm(total=len(row_tiles) * len(col_tiles), desc=f"segment {path.name}", unit="tile",
                       disable=not opts.progress) as bar:
            for rows in row_tiles:
                for cols in col_tiles:
                    (y0, y1), (x0, x1) = rows.out, cols.out
                    write_win = Window(x0, y0, x1 - x0, y1 - y0)
                    pred = _tile_classes(r, (Hs, Ws), rows, cols, model, text, query_to_class, len(names), window,
                                         stride, opts)
                    valid = read_valid(r, write_win)
                    if valid is not None:
                        pred[~valid] = NODATA
                    dst.write(pred[None], window=write_win)
                    counts += np.bincount(pred[pred != NODATA].ravel(), minlength=len(names))[:len(names)]
                    bar.update(1)
        preview = write_preview(tif, r, names, colours, out / f"{path.stem}.png", opts.preview_size)
    finally:
        r.close()
    total = max(1, int(counts.sum()))
    fractions = {n: round(float(c) / total, 4) for n, c in zip(names, counts)}
    result = SegmentResult(str(path), str(tif), str(preview), names, r.height * r.width,
                           time.perf_counter() - t0, fractions)
    (out / f"{path.stem}.json").write_text(json.dumps(result.__dict__, indent=2))
    return result


def _tile_classes(r, scaled: tuple[int, int], rows: AxisTile, cols: AxisTile, model, text, query_to_class,
                  n_classes: int, window: int, stride: int, opts: SegmentOptions) -> np.ndarray:
    """uint8 class indexes of one tile's output pixels: read its region, encode the whole raster's windows that
    fall in it, average them, resample to the output grid, score the classes."""
    (Hs, Ws), (H, W) = scaled, (r.height, r.width)
    (ry0, ry1), (rx0, rx1) = rows.region, cols.region
    # the region in input pixels; fractional when rescaled (GDAL honours it exactly)
    region = Window(rx0 * W / Ws, ry0 * H / Hs, (rx1 - rx0) * W / Ws, (ry1 - ry0) * H / Hs)
    x = normaliser(model)(torch.from_numpy(read_rgb(r, region, (ry1 - ry0, rx1 - rx0))))
    logits = sliding_window_logits(model, [x.to(next(model.parameters()).device)], text, crop=window, stride=stride,
                                   attn=opts.attn, cls_lambda=opts.cls_lambda, amp=opts.amp,
                                   window_batch_size=opts.window_batch_size, boxes=[tile_boxes(rows, cols)])[0]
    logits = cols.take(rows.take(logits, 1), 2)
    scores = class_scores(logits, query_to_class, n_classes, logit_scale=opts.logit_scale)
    return predict_classes(scores, opts.threshold, opts.background_index).cpu().numpy().astype(np.uint8)


def _class_colours(names: list[str]) -> np.ndarray:
    """Distinct colours; black only for a class literally called background."""
    full = make_palette(len(names) + 1)
    colours = full[1:].copy()
    for i, n in enumerate(names):
        if n.lower() in ("background", "clutter", "other"):
            colours[i] = full[0]
    return colours


def write_preview(tif: Path, r, names, colours, png: Path, max_side: int) -> Path:
    """Image | colour-mapped prediction with a legend, from decimated reads (bounded memory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    thumb = read_thumbnail(r, max_side).transpose(1, 2, 0)
    with rasterio.open(tif) as src:
        pred = src.read(1, out_shape=thumb.shape[:2], resampling=Resampling.nearest)
    rgba = np.zeros(pred.shape + (4,), np.uint8)
    known = pred != NODATA
    rgba[known, :3] = colours[pred[known]]
    rgba[known, 3] = 255
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * thumb.shape[0] / max(thumb.shape[1], 1) + 1))
    axes[0].imshow(thumb)
    axes[0].set_title(r.path.name)
    axes[1].imshow(thumb)
    axes[1].imshow(rgba, alpha=0.75)
    axes[1].set_title("prediction")
    for ax in axes:
        ax.axis("off")
    fig.legend(handles=[Patch(color=colours[i] / 255, label=n) for i, n in enumerate(names)],
               loc="lower center", ncol=min(len(names), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
