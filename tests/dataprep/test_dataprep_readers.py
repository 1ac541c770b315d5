"""Each detection-format reader on tiny hand-written files (tests/data/<format>/make.py)."""
import json

import pytest
from support.fixtures import fixture_module

from farslip.dataprep.detection import (LabelFileError, read_coco, read_dota, read_fair1m, read_voc, rle_bounds,
                                     rle_counts, scan_dataset)


def test_dota_reader(tmp_path):
    root = fixture_module("dota").make(tmp_path)
    lf = read_dota(root / "labelTxt" / "P0001.txt")
    assert lf.meta == {"imagesource": "GoogleEarth", "gsd": 0.5}
    assert [o.category for o in lf.objects] == ["storage-tank", "plane", "small-vehicle", "ship"]
    assert [o.difficult for o in lf.objects] == [False, True, False, False]
    assert lf.objects[0].polygon == [(100, 100), (200, 100), (200, 150), (100, 150)]
    assert lf.objects[0].record == "line 3"
    (bad,) = lf.problems
    assert bad.kind == "bad-record" and bad.record == "line 7" and bad.field == "y2" and "abc" in bad.message
    lf4 = read_dota(root / "labelTxt" / "P0004.txt")
    assert lf4.meta["gsd"] is None  # 'gsd:null'
    assert lf4.objects[0].difficult is False  # line without the flag


def test_dota_reader_bad_lines(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("\ufeffimagesource:GoogleEarth\n1 2 3 4 5 6 7 8\n1 2 3 4 5 6 7 8 ship 2\n1 2 3 4 5 6 7 8 ship 0 x y\n")
    lf = read_dota(p)
    assert lf.objects == []
    assert [(q.record, q.field) for q in lf.problems] == [("line 2", None), ("line 3", "difficult"), ("line 4", None)]
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LabelFileError, match="x.txt"):
        read_dota(p)


def test_voc_reader(tmp_path):
    root = fixture_module("dior").make(tmp_path)
    ann = root / "Annotations" / "Horizontal Bounding Boxes"
    lf = read_voc(ann / "00001.xml")
    assert lf.meta == {"filename": "00001.jpg", "width": 800, "height": 800}
    assert [o.category for o in lf.objects] == ["storagetank", "Expressway-Service-area", "vehicle"]
    assert lf.objects[1].difficult is True
    assert lf.objects[0].bounds == (10, 20, 110, 220)
    assert [(q.record, q.field) for q in lf.problems] == [("object 4", "bndbox"), ("object 5", "bndbox/xmax")]
    rot = read_voc(ann / "00002.xml").objects[0]
    assert rot.bounds == (350, 350, 450, 450) and len(rot.polygon) == 4
    with pytest.raises(LabelFileError, match="00009.xml"):
        read_voc(ann / "00009.xml")
    other = tmp_path / "o.xml"
    other.write_text("<doc/>")
    with pytest.raises(LabelFileError, match="expected <annotation>"):
        read_voc(other)


def test_voc_rolabelimg_box(tmp_path):
    p = tmp_path / "r.xml"
    p.write_text("<annotation><object><name>ship</name><robndbox><cx>50</cx><cy>40</cy><w>20</w><h>10</h>"
                 "<angle>1.5707963</angle></robndbox></object></annotation>")
    (o,) = read_voc(p).objects
    x1, y1, x2, y2 = o.bounds
    assert (round(x1), round(y1), round(x2), round(y2)) == (45, 30, 55, 50)


def test_fair1m_reader(tmp_path):
    root = fixture_module("fair1m").make(tmp_path)
    lf = read_fair1m(root / "labelXml" / "0.xml")
    assert lf.meta["filename"] == "0.tif" and lf.meta["width"] == 600 and lf.meta["imagesource"] == "GF2/GF3"
    assert [o.category for o in lf.objects] == ["Boeing737", "Small Car", "Dump Truck"]
    assert len(lf.objects[0].polygon) == 4  # the repeated closing point is dropped
    (bad,) = lf.problems
    assert bad.record == "object 4" and "point 2" in bad.message


def test_rle():
    assert rle_counts("325") == [3, 2, 5]
    assert rle_counts("1238") == [1, 2, 3, 10]  # deltas from the fourth count on
    assert rle_counts("1:3H") == [1, 10, 3, 2]  # negative delta
    # 4 x 3 mask (h=4, w=3), column-major: 5 background, 3 foreground (rows 1..3 of column 1), 4 background
    assert rle_bounds({"size": [4, 3], "counts": [5, 3, 4]}) == (1, 1, 2, 4)
    assert rle_bounds({"size": [4, 3], "counts": [12]}) is None
    with pytest.raises(ValueError):
        rle_bounds({"size": [2, 2], "counts": [3, 5]})


def test_rle_matches_encoder(tmp_path):
    import numpy as np

    enc = fixture_module("coco").rle_encode
    mask = np.zeros((50, 40), bool)
    mask[7:30, 3:33] = True
    mask[40, 39] = True
    assert rle_bounds(enc(mask)) == (3, 7, 40, 41)


def test_coco_reader(tmp_path):
    root = fixture_module("coco").make(tmp_path)
    ds = read_coco(root / "instances.json")
    assert ds.categories == {1: "storage_tank", 2: "Large_Vehicle", 3: "plane", 4: "Harbor"}
    im1 = next(i for i in ds.images if i["id"] == 1)
    objs = {o.record: o for o in im1["objects"]}
    assert objs["annotation id 10"].bounds == (10, 20, 40, 60)
    assert len(objs["annotation id 11"].polygon) == 4  # the polygon, not the bbox
    assert objs["annotation id 12"].difficult is True  # iscrowd
    im2 = next(i for i in ds.images if i["id"] == 2)
    assert im2["objects"][0].bounds == (5, 10, 25, 20)  # from the compressed RLE
    kinds = sorted((p.kind, p.record, p.field) for p in ds.problems)
    assert kinds == [("bad-record", "annotation id 14", "bbox"), ("bad-record", "annotation id 15", "image_id"),
                     ("unknown-category", "annotation id 13", "category_id")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(LabelFileError, match="annotations"):
        read_coco(bad)


def test_scan_reports_missing_not_fatal(tmp_path):
    root = fixture_module("dota").make(tmp_path)
    scan = scan_dataset("dota", root / "images", root / "labelTxt")
    assert [s.key for s in scan.items] == ["P0001", "P0004"]
    assert sorted((p.kind, p.path.rsplit("/", 1)[-1]) for p in scan.problems) == [
        ("missing-image", "P0003.txt"), ("missing-label", "P0002.png")]
    assert "storage-tank" in scan.vocabulary
    coco = fixture_module("coco").make(tmp_path / "coco")
    scan = scan_dataset("coco", coco / "images", coco / "instances.json")
    assert [s.key for s in scan.items] == ["a", "sub_b"]
    assert scan.vocabulary == ["storage_tank", "Large_Vehicle", "plane", "Harbor"]
    assert {p.kind for p in scan.problems} >= {"missing-image", "missing-label"}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_dataset("dota", tmp_path / "nowhere", root / "labelTxt")
    with pytest.raises(ValueError, match="unknown format"):
        scan_dataset("yolo", root / "images", root / "labelTxt")
