"""Inputs checked where they enter: category names of any script survive a data build; detection lines lacking a
field are bad records, never a category; COCO annotations without ids likewise."""
from __future__ import annotations

import json
import unicodedata

import numpy as np
from PIL import Image

from support.fixtures import read_records
from support.hostile import run_cli

LABELS = """imagesource:GoogleEarth
gsd:0.5
10 10 60 10 60 60 10 60 Gebäude 0
100 100 150 100 150 150 100 150 储罐 0
110 20 160 20 160 70 110 70 {nfd} 0
20 120 60 120 60 160 20 160 0
30 130 70 130 70 170
"""


def _dota(root):
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
        root / "images" / "P0001.png")
    nfd = unicodedata.normalize("NFD", "Gebäude")
    (root / "labelTxt" / "P0001.txt").write_text(LABELS.format(nfd=nfd), encoding="utf-8")
    return root


def test_unicode_categories_survive_and_a_missing_class_is_a_bad_line(capsys, tmp_path):
    root = _dota(tmp_path / "dota")
    out = tmp_path / "mgrs"
    res = run_cli(capsys, "data", "build", "--format", "dota", "--images", root / "images", "--labels",
                  root / "labelTxt", "--out", out, "--chip-size", "0", "--no-progress")
    assert res.code == 0, res.err
    cats = [o["category"] for r in read_records(out) for o in r["segment"]]
    assert sorted(cats) == sorted(["gebäude", "gebäude", "储罐"])  # NFC and NFD spellings are one name
    ids = json.loads((out / "categories.json").read_text(encoding="utf-8"))
    assert {"gebäude", "储罐"} <= set(ids) and "0" not in ids  # with DOTA's own classes, for stable ids
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    problems = json.dumps(report, ensure_ascii=False)
    assert "category is missing" in problems and "line 6" in problems and "line 7" in problems


def test_coco_annotation_without_ids_is_a_bad_record(tmp_path):
    from farslip.dataprep.detection import read_coco

    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "Wasserturm"}],
        "annotations": [{"id": 7, "image_id": 1, "bbox": [1, 1, 10, 10]},
                        {"id": 8, "category_id": 1, "bbox": [1, 1, 10, 10]},
                        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]}))
    ds = read_coco(path)
    assert [(p.record, p.field) for p in ds.problems] == [("annotation id 7", "category_id"),
                                                         ("annotation id 8", "image_id")]
    assert [o.category for im in ds.images for o in im["objects"]] == ["Wasserturm"]


def test_category_map_names_in_other_scripts(tmp_path):
    from farslip.dataprep.names import CategoryMap, load_category_ids

    m = CategoryMap({"Öltank": "Öltank", "water-tower": "水塔"})
    assert m("öltank") == "öltank" and m("Water_Tower") == "水塔" and m("इमारत") == "इमारत"
    table = tmp_path / "ids.txt"
    table.write_text(unicodedata.normalize("NFD", "Gebäude") + "\n储罐\n", encoding="utf-8")
    assert load_category_ids(table) == {"Gebäude": 0, "储罐": 1}
