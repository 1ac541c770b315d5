"""Colour overlays for OVSS: ``image | prediction | ground truth`` side by side, with a class legend."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..engine.colours import colourise, palette
from ..engine.images import read_rgb_array


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
