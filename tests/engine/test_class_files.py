"""The shipped class files by name: ``--classes-file openearthmap`` and its spellings; files win over names."""
from __future__ import annotations

import pytest

from farslip.core.errors import UsageError
from farslip.engine.class_files import resolve_class_file, shipped_class_files
from farslip.infer.common import parse_classes


def test_all_eight_sets_are_shipped():
    """SegEarth-OV's eight, and SegEarth-OV3's three that differ from them (its LoveDA, Potsdam, Vaihingen)."""
    assert set(shipped_class_files()) == {"openearthmap", "loveda", "isaid", "potsdam", "vaihingen", "uavid",
                                          "udd5", "vdd", "ov3_loveda", "ov3_potsdam", "ov3_vaihingen"}


@pytest.mark.parametrize("spelling", ["openearthmap", "OpenEarthMap", "cls_openearthmap", "cls_openearthmap.txt"])
def test_a_name_finds_the_packaged_file(spelling):
    assert resolve_class_file(spelling) == shipped_class_files()["openearthmap"]
    lines = [ln for ln in shipped_class_files()["openearthmap"].read_text().splitlines() if ln.strip()]
    classes = parse_classes(classes_file=spelling)
    assert len(classes) == len(lines) and classes[0] == [s.strip() for s in lines[0].split(",")]


def test_a_file_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loveda").write_text("road\nwater\n")
    assert parse_classes(classes_file="loveda") == [["road"], ["water"]]


def test_neither_file_nor_name_lists_the_sets(tmp_path):
    with pytest.raises(UsageError, match=r"class file not found: configs/ovss/cls_oem.txt .*openearthmap, "):
        resolve_class_file("configs/ovss/cls_oem.txt")
    with pytest.raises(UsageError, match="shipped set"):
        resolve_class_file("oem")
