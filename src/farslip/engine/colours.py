"""Class colours for maps and overlays (the same colour for a class in every picture farslip draws)."""
from __future__ import annotations

import colorsys

import numpy as np

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

