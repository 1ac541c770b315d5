"""Write a tiny FAIR1M-format dataset: images/*.tif + labelXml/*.xml (polygons, first point repeated).

    python tests/data/fair1m/make.py          # writes tests/data/fair1m/generated/
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image


def _obj(name: str, points: list[tuple[float, float]]) -> str:
    pts = "".join(f"<point>{x:.6f},{y:.6f}</point>" for x, y in points + points[:1])
    return (f"<object><coordinate>pixel</coordinate><type>rectangle</type><description>None</description>"
            f"<possibleresult><name>{name}</name><probability>1</probability></possibleresult>"
            f"<points>{pts}</points></object>")


FAIR_0 = f"""<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <source><filename>0.tif</filename><origin>GF2/GF3</origin></source>
  <research><version>1.0</version><provider>FAIR1M</provider></research>
  <size><width>600</width><height>500</height><depth>3</depth></size>
  <objects>
    {_obj("Boeing737", [(100, 100), (160, 100), (160, 150), (100, 150)])}
    {_obj("Small Car", [(300, 200), (310, 195), (315, 205), (305, 210)])}
    {_obj("Dump Truck", [(590, 480), (620, 480), (620, 520), (590, 520)])}
    <object><possibleresult><name>Tugboat</name></possibleresult>
      <points><point>1,2</point><point>x,y</point></points></object>
  </objects>
</annotation>
"""

EXPECTED = {
    # Dump Truck lies 10x20 inside the 600x500 image (a quarter of its area): kept, clipped to the image
    "0.jpg": [("boeing 737", [100, 100, 160, 150]), ("small car", [300, 195, 315, 210]),
              ("dump truck", [590, 480, 600, 500])],
}


def make(root: str | Path) -> Path:
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelXml").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (600, 500), (100, 100, 100)).save(root / "images" / "0.tif")
    (root / "labelXml" / "0.xml").write_text(FAIR_0)
    return root


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
