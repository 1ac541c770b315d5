import json

import pytest

from farslip.dataprep.names import (CategoryMap, assign_category_ids, clean_name, load_category_ids,
                                 load_category_map, normalize_category, squash)


@pytest.mark.parametrize("raw,plain", [
    ("storage-tank", "storage tank"), ("storagetank", "storage tank"), ("Storage_Tank", "storage tank"),
    ("StorageTank", "storage tank"), ("plane", "airplane"), ("Expressway-Service-area", "expressway service area"),
    ("groundtrackfield", "ground track field"), ("Ground_Track_Field", "ground track field"),
    ("baseball-diamond", "baseball field"), ("Soccer_ball_field", "soccer field"), ("Football Field", "soccer field"),
    ("Boeing737", "boeing 737"), ("A321", "airbus a321"), ("other-airplane", "other airplane"),
    ("Small Car", "small car"), ("Truck w/Box", "truck with box"), ("Hut/Tent", "hut or tent"),
    ("Fixed-wing Aircraft", "fixed wing aircraft"), ("  windmill ", "windmill"),
])
def test_default_map(raw, plain):
    assert normalize_category(raw) == plain


def test_squash_and_clean():
    assert squash("Storage-Tank_1") == "storagetank1"
    assert clean_name("LargeVehicle") == "large vehicle"
    assert clean_name("__") == ""


def test_every_official_name_maps_to_plain_words():
    from farslip.dataprep.names import DIOR_CLASSES, DOTA_CLASSES, FAIR1M_CLASSES, ISAID_CLASSES

    m = CategoryMap()
    for raw in DOTA_CLASSES + DIOR_CLASSES + FAIR1M_CLASSES + ISAID_CLASSES:
        plain = m(raw)
        assert plain and plain == plain.lower() and all(c.isalnum() or c == " " for c in plain), raw
    # DOTA and DIOR and iSAID agree where they name the same thing
    assert m("storage-tank") == m("storagetank") == m("storage_tank")
    assert m("tennis-court") == m("tenniscourt") == m("tennis_court")


def test_override_file_json_and_text(tmp_path):
    j = tmp_path / "map.json"
    j.write_text(json.dumps({"plane": "aircraft", "helicopter": None, "Small-Vehicle": "car"}))
    m = CategoryMap.from_file(j)
    assert m("plane") == "aircraft"
    assert m("helicopter") is None  # dropped
    assert m("small_vehicle") == "car"
    assert m("storage-tank") == "storage tank"  # default still there
    t = tmp_path / "map.txt"
    t.write_text("# raw,plain\nplane,jet\nship,\n")
    assert load_category_map(t) == {"plane": "jet", "ship": None}
    m2 = CategoryMap.from_file(t, use_default=False)
    assert m2("plane") == "jet" and m2("ship") is None and m2("storage-tank") == "storage tank"
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        load_category_map(bad)


def test_ids_are_stable_and_order_free():
    a = assign_category_ids(["ship", "airplane", "vehicle"])
    b = assign_category_ids(["vehicle", "ship", "airplane", "ship"])
    assert a == b == {"airplane": 0, "ship": 1, "vehicle": 2}
    fixed = assign_category_ids(["bridge", "ship"], fixed={"ship": 0, "airplane": 1})
    assert fixed == {"ship": 0, "airplane": 1, "bridge": 2}
    with pytest.raises(ValueError):
        assign_category_ids([], fixed={"a": 0, "b": 0})


def test_load_category_ids(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps(["ship", "airplane"]))
    assert load_category_ids(p) == {"ship": 0, "airplane": 1}
    p.write_text(json.dumps({"ship": 3, "airplane": "x"}))
    with pytest.raises(ValueError, match="airplane"):
        load_category_ids(p)
    t = tmp_path / "c.txt"
    t.write_text("ship\n\nairplane\n")
    assert load_category_ids(t) == {"ship": 0, "airplane": 1}
