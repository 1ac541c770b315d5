"""Colour overlays for OVSS: ``image | prediction | ground truth`` side by side, with a class legend."""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .io import read_rgb_array

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


def save_overlay(path, image, pred, label, num_classes: int, ignore_index: int = 255, *,
                 class_names: Sequence[str] | None = None, max_height: int = 384, min_height: int = 160) -> Path:
    """Write ``image | prediction | ground truth`` (each scaled to ``min_height..max_height`` rows) as PNG."""
    rgb = read_rgb_array(image) if isinstance(image, (str, Path)) else np.asarray(image)
    pred = pred.numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    label = label.numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    panels = [Image.fromarray(rgb), Image.fromarray(colourise(pred, num_classes, ignore_index)),
              Image.fromarray(colourise(label, num_classes, ignore_index))]
    h, w = rgb.shape[:2]
    f = max_height / h if h > max_height else max(1.0, min_height / h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    panels = [panels[0].resize(size, Image.BILINEAR)] + [p.resize(size, Image.NEAREST) for p in panels[1:]]
    gap = 4
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    width = max(3 * size[0] + 2 * gap, 300)
    cols = max(1, width // 150)
    legend_h = 16 * ((len(names) + cols - 1) // cols) + 22
    canvas = Image.new("RGB", (width, size[1] + legend_h), (255, 255, 255))
    for i, p in enumerate(panels):
        canvas.paste(p, (i * (size[0] + gap), 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, size[1] + 2), "image | prediction | ground truth (white: ignored)", fill=(0, 0, 0))
    pal = palette(num_classes)
    col_w = width // cols
    for i, name in enumerate(names):
        x, y = (i % cols) * col_w + 2, size[1] + 18 + 16 * (i // cols)
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(int(c) for c in pal[i]), outline=(0, 0, 0))
        draw.text((x + 14, y), name, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
