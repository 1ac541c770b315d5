"""Write a tiny COCO-JSON detection dataset (iSAID-style names): images/ + instances.json.

    python tests/data/coco/make.py            # writes tests/data/coco/generated/

Covers: bbox-only annotations, polygon segmentation, compressed RLE without a bbox, iscrowd, a file_name in a
sub-folder, an image listed but missing, an image on disk but not listed, an unknown category, a bad bbox.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary mask (column-major runs, as pycocotools' maskApi.c writes them)."""
    h, w = mask.shape
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(n)
            cur, n = v, 0
        n += 1
    counts.append(n)
    s = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            s.append(chr(c + 48))
    return {"size": [h, w], "counts": "".join(s)}


def make(root: str | Path) -> Path:
    root = Path(root)
    (root / "images" / "sub").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (640, 480), (90, 90, 90)).save(root / "images" / "a.png")
    Image.new("RGB", (64, 64), (30, 60, 90)).save(root / "images" / "sub" / "b.jpg")
    Image.new("RGB", (32, 32), (0, 0, 0)).save(root / "images" / "unlisted.png")
    mask = np.zeros((64, 64), bool)
    mask[10:20, 5:25] = True  # rows 10..19, columns 5..24 -> box (5, 10, 25, 20)
    data = {
        "info": {"description": "farslip test fixture"},
        "images": [
            {"id": 1, "file_name": "a.png", "width": 640, "height": 480},
            {"id": 2, "file_name": "sub/b.jpg", "width": 64, "height": 64},
            {"id": 3, "file_name": "c.png", "width": 100, "height": 100},
        ],
        "categories": [{"id": 1, "name": "storage_tank"}, {"id": 2, "name": "Large_Vehicle"},
                       {"id": 3, "name": "plane"}, {"id": 4, "name": "Harbor"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "iscrowd": 0, "area": 1200},
            {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [100, 100, 50, 60],
             "segmentation": [[100, 130, 125, 100, 150, 130, 125, 160]]},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [300, 300, 40, 40], "iscrowd": 1},
            {"id": 13, "image_id": 1, "category_id": 99, "bbox": [0, 0, 10, 10]},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": "abc"},
            {"id": 15, "image_id": 42, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 16, "image_id": 1, "category_id": 4, "bbox": [600, 450, 0, 10]},
            {"id": 20, "image_id": 2, "category_id": 4, "segmentation": rle_encode(mask), "iscrowd": 0},
            {"id": 30, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5]},
        ],
    }
    (root / "instances.json").write_text(json.dumps(data, indent=1))
    return root


EXPECTED = {
    # global_filepath (relative to global_imgs/) -> objects (category, box in image pixels)
    "a.jpg": [("storage tank", [10, 20, 40, 60]), ("large vehicle", [100, 100, 150, 160]),
              ("airplane", [300, 300, 340, 340])],
    "sub_b.jpg": [("harbor", [5, 10, 25, 20])],
}

if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
