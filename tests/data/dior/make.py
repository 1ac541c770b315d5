"""Write a tiny DIOR-format dataset: JPEGImages/*.jpg + Annotations/*.xml (Pascal VOC; one DIOR-R file).

    python tests/data/dior/make.py            # writes tests/data/dior/generated/
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

VOC_00001 = """<annotation>
  <filename>00001.jpg</filename>
  <source><database>DIOR</database></source>
  <size><width>800</width><height>800</height><depth>3</depth></size>
  <segmented>0</segmented>
  <object>
    <name>storagetank</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>110</xmax><ymax>220</ymax></bndbox>
  </object>
  <object>
    <name>Expressway-Service-area</name><pose>Unspecified</pose><truncated>0</truncated><difficult>1</difficult>
    <bndbox><xmin>300</xmin><ymin>300</ymin><xmax>500</xmax><ymax>450</ymax></bndbox>
  </object>
  <object>
    <name>vehicle</name><difficult>0</difficult>
    <bndbox><xmin>600</xmin><ymin>600</ymin><xmax>590</xmax><ymax>650</ymax></bndbox>
  </object>
  <object>
    <name>ship</name><difficult>0</difficult>
  </object>
  <object>
    <name>golffield</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>three</xmax><ymax>40</ymax></bndbox>
  </object>
</annotation>
"""
# DIOR-R oriented box: a diamond centred at (400, 400)
VOC_00002 = """<annotation>
  <filename>00002.jpg</filename>
  <size><width>800</width><height>800</height><depth>3</depth></size>
  <object>
    <name>airplane</name><difficult>0</difficult>
    <robndbox>
      <x_left_top>400</x_left_top><y_left_top>350</y_left_top>
      <x_right_top>450</x_right_top><y_right_top>400</y_right_top>
      <x_right_bottom>400</x_right_bottom><y_right_bottom>450</y_right_bottom>
      <x_left_bottom>350</x_left_bottom><y_left_bottom>400</y_left_bottom>
    </robndbox>
  </object>
</annotation>
"""

EXPECTED = {
    "00001.jpg": [("storage tank", [10, 20, 110, 220]), ("expressway service area", [300, 300, 500, 450])],
    "00002.jpg": [("airplane", [350, 350, 450, 450])],
}


def make(root: str | Path) -> Path:
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    ann = root / "Annotations" / "Horizontal Bounding Boxes"
    ann.mkdir(parents=True, exist_ok=True)
    for name, colour in (("00001", (90, 120, 90)), ("00002", (120, 120, 140))):
        Image.new("RGB", (800, 800), colour).save(root / "JPEGImages" / f"{name}.jpg", quality=80)
    (ann / "00001.xml").write_text(VOC_00001)
    (ann / "00002.xml").write_text(VOC_00002)
    (ann / "00009.xml").write_text("<annotation><object><name>ship</name>")  # broken XML, and no image
    return root


if __name__ == "__main__":
    print(make(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "generated"))
