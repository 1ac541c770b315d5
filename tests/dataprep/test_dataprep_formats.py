"""End to end builds from DIOR, FAIR1M and COCO fixtures, checked against hand-computed boxes."""
import json

from support.fixtures import fixture_module, objects_by_file, open_like_official, read_records

from farslip.dataprep import BuildConfig, build_mgrs, validate_mgrs


def _build(fmt, images, labels, out, **kw):
    return build_mgrs(BuildConfig(format=fmt, images=str(images), labels=str(labels), out=str(out), **kw),
                      progress=False)


def test_dior(tmp_path):
    m = fixture_module("dior")
    root = m.make(tmp_path / "dior")
    s = _build("dior", root / "JPEGImages", root / "Annotations" / "Horizontal Bounding Boxes", tmp_path / "o")
    assert objects_by_file(read_records(tmp_path / "o")) == m.EXPECTED
    assert s["problems"] == {"bad-record": 2, "missing-image": 1, "degenerate": 1}  # 00009.xml has no image
    ids = json.loads((tmp_path / "o" / "categories.json").read_text())
    assert len(ids) == 20 and "expressway service area" in ids
    s = _build("dior", root / "JPEGImages", root / "Annotations" / "Horizontal Bounding Boxes", tmp_path / "d",
               drop_difficult=True)
    assert s["counts"]["dropped_difficult"] == 1
    assert validate_mgrs(tmp_path / "o").ok
    assert len(open_like_official(tmp_path / "o" / "text_info.json", tmp_path / "o" / "global_imgs")) == len(m.EXPECTED)


def test_fair1m(tmp_path):
    m = fixture_module("fair1m")
    root = m.make(tmp_path / "fair1m")
    s = _build("fair1m", root / "images", root / "labelXml", tmp_path / "o")
    assert objects_by_file(read_records(tmp_path / "o")) == m.EXPECTED
    assert s["problems"] == {"bad-record": 1}
    assert validate_mgrs(tmp_path / "o").ok
    assert len(open_like_official(tmp_path / "o" / "text_info.json", tmp_path / "o" / "global_imgs")) == len(m.EXPECTED)


def test_coco(tmp_path):
    m = fixture_module("coco")
    root = m.make(tmp_path / "coco")
    s = _build("coco", root / "images", root / "instances.json", tmp_path / "o")
    assert objects_by_file(read_records(tmp_path / "o")) == m.EXPECTED
    assert s["problems"] == {"bad-record": 2, "unknown-category": 1, "missing-image": 1, "missing-label": 1,
                             "degenerate": 1}
    ids = json.loads((tmp_path / "o" / "categories.json").read_text())
    assert ids == {"airplane": 0, "harbor": 1, "large vehicle": 2, "storage tank": 3}
    s = _build("coco", root / "images", root / "instances.json", tmp_path / "d", drop_difficult=True)
    assert s["counts"]["dropped_difficult"] == 1  # iscrowd
    assert validate_mgrs(tmp_path / "o").ok
    assert len(open_like_official(tmp_path / "o" / "text_info.json", tmp_path / "o" / "global_imgs")) == len(m.EXPECTED)
