"""Write a tiny DOTA-format dataset (images/*.png + labelTxt/*.txt), hand-checkable.

    python tests/data/dota/make.py            # writes tests/data/dota/generated/

Image pixels encode their position (R = x mod 256, G = y mod 256, B = 128) so a test can tell where a chip came
from. What a build with the defaults (chips 800, overlap 200, visibility 0.7) must give is in EXPECTED.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

# P0001 is 1000 x 700: chips (0, 0, 800, 700) and (200, 0, 1000, 700).
P0001 = """imagesource:GoogleEarth
gsd:0.5
100 100 200 100 200 150 100 150 storage-tank 0
700 300 900 300 900 400 700 400 plane 1
780 600 820 600 820 710 780 710 small-vehicle 0
50 50 50 50 50 50 50 50 ship 0
10 20 30 abc 40 50 60 70 ship 0
"""
# P0004: 'gsd:null', a line without the difficult flag, a self-intersecting (bow-tie) quadrilateral.
P0004 = """imagesource:GaoFen2
gsd:null
10 10 60 10 60 60 10 60 harbor
100 100 150 150 150 100 100 150 storagetank 0
"""
P0003 = """imagesource:GoogleEarth
gsd:0.3
1 1 20 1 20 20 1 20 ship 0
"""

EXPECTED = {
    # global_filepath (chip file, relative to global_imgs/) -> objects (category, box in chip pixels)
    "P0001__0_0.jpg": [("storage tank", [100, 100, 200, 150])],
    "P0001__200_0.jpg": [("airplane", [500, 300, 700, 400]), ("small vehicle", [580, 600, 620, 700])],
    "P0004.jpg": [("harbor", [10, 10, 60, 60]), ("storage tank", [100, 100, 150, 150])],
}


def position_image(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx % 256, yy % 256, np.full_like(xx, 128)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def make(root: str | Path) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    position_image(1000, 700).save(root / "images" / "P0001.png")
    position_image(300, 300).save(root / "images" / "P0002.png")  # no label file: reported
    position_image(400, 300).save(root / "images" / "P0004.png")
    (root / "labelTxt" / "P0001.txt").write_text(P0001)
    (root / "labelTxt" / "P0003.txt").write_text(P0003)  # no image: reported
    (root / "labelTxt" / "P0004.txt").write_text(P0004)
    return root


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
