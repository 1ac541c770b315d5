"""Write a tiny MGRS-format set (official release layout) with the quirks real releases have.

    python tests/data/mgrs_quirky/make.py OUT_DIR

Records: 12 usable images (RGB and grayscale, some without objects), 1 corrupt image, 1 missing image, 1 record
without caption; objects with bbox dicts under other key names, free-text captions, boxes out of bounds and
degenerate boxes. ``caption_quirks=True`` appends records 15-18 whose global caption is empty, absent or blank,
with only some of the other captions (which caption trains, or whether the record is skipped, depends on the
caption rule).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ["airplane", "ship", "storage tank"]


def make(out: str | Path, size: int = 160, seed: int = 0, caption_quirks: bool = False) -> Path:
    out = Path(out)
    imgs = out / "global_imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(12):
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mode = "L" if i % 4 == 3 else "RGB"  # some grayscale images
        Image.fromarray(arr).convert(mode).save(imgs / f"{i:03d}.png")
        segment = []
        if i % 5 != 4:  # some images without objects
            for j in range(3):
                c = (i + j) % 3
                x1, y1 = int(rng.integers(0, size // 2)), int(rng.integers(0, size // 2))
                w, h = int(rng.integers(20, size // 2)), int(rng.integers(20, size // 2))
                if j == 0:   # the official key names
                    bbox = {"x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h, "width": size, "height": size}
                else:        # other key names, same order
                    bbox = {"xmin": x1, "ymin": y1, "xmax": x1 + w, "ymax": y1 + h, "img_w": size, "img_h": size}
                segment.append({"bbox": bbox, "category": CATEGORIES[c], "category_id": c})
            if i % 3 == 0:   # a free-text region caption instead of a category
                segment.append({"bbox": {"x1": 5, "y1": 5, "x2": 90, "y2": 90, "W": size, "H": size},
                                "cap": "a long white ship moored beside the pier"})
            if i % 3 == 1:   # a box reaching out of the image, and a degenerate one
                segment.append({"bbox": {"x1": size - 40, "y1": -10, "x2": size + 50, "y2": 60, "W": size, "H": size},
                                "category": "ship", "category_id": 1})
                segment.append({"bbox": {"x1": 30, "y1": 30, "x2": 30, "y2": 80, "W": size, "H": size},
                                "category": "airplane", "category_id": 0})
        items.append({"global_filepath": f"{i:03d}.png",
                      "global_caption": f"a satellite image with {len(segment)} objects",
                      "detailed_caption": f"a detailed description of scene {i} " + "with many words " * 20,
                      "brief_caption": f"scene {i}", "segment": segment})
    (imgs / "corrupt.png").write_bytes(b"this is not a png")
    items.append({"global_filepath": "corrupt.png", "global_caption": "a corrupt image", "segment": []})
    items.append({"global_filepath": "missing.png", "global_caption": "a missing image", "segment": []})
    items.append({"global_filepath": "000.png", "segment": []})  # no caption at all
    if caption_quirks:
        both = {"bbox": [10, 10, 90, 90, size, size], "category": "ship", "category_id": 1, "cap": "a red ship"}
        items += [{"global_filepath": "001.png", "global_caption": "", "detailed_caption": "detailed only 15",
                   "brief_caption": "brief 15", "segment": [both]},                 # empty global caption
                  {"global_filepath": "002.png", "detailed_caption": "detailed only 16", "segment": []},
                  {"global_filepath": "003.png", "brief_caption": "brief only 17", "segment": []},
                  {"global_filepath": "005.png", "global_caption": "   ", "detailed_caption": "detailed 18",
                   "segment": []}]                                                   # blank global caption
    (out / "text_info.json").write_text(json.dumps(items, indent=1))
    return out / "text_info.json"


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
