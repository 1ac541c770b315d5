"""`farslip data validate` catches bad files; `farslip data stats` prints tables and writes a PNG; validate and
caption find images whether global_filepath is relative to global_imgs/ (official) or to the JSON's folder."""
import copy
import json

import pytest
from PIL import Image

from farslip.dataprep import BuildError, mgrs_stats, plot_stats, recaption_mgrs, validate_mgrs, write_mgrs_json
from farslip.dataprep.mgrs import mgrs_record
from farslip.cli import main


def _bbox(x1, y1, x2, y2, w=100, h=80):
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "width": w, "height": h}


@pytest.fixture
def good(tmp_path):
    d = tmp_path / "mgrs"
    (d / "global_imgs").mkdir(parents=True)
    recs = []
    for i in range(3):
        Image.new("RGB", (100, 80), (i * 40, 90, 90)).save(d / "global_imgs" / f"{i}.jpg")
        objs = [{"category": "ship", "category_id": 1, "box": [10, 10, 30 + i, 40]},
                {"category": "airplane", "category_id": 0, "box": [0, 0, 100, 80]},
                {"category": "ship", "category_id": 1, "box": [50, 10, 70, 40]}][: i + 1]
        caps = {"brief_caption": "b", "global_caption": "g", "detailed_caption": "d d d"}
        recs.append(mgrs_record(f"{i}.jpg", caps, objs, 100, 80))  # relative to global_imgs/, as official
    write_mgrs_json(recs, d / "text_info.json")
    return d, recs


def _write(d, recs):
    (d / "text_info.json").write_text(json.dumps(recs))


def _errors(d, **kw):
    return [f"{f.where}: {f.message}" for f in validate_mgrs(d, **kw).errors]


def test_good_file_passes(good):
    d, _ = good
    rep = validate_mgrs(d)
    assert rep.ok and rep.records == 3 and rep.objects == 6 and rep.images_checked == 3
    assert any("under 64x64" in w.message for w in rep.warnings)


@pytest.mark.parametrize("mutate,expect", [
    (lambda r: r[0]["segment"][0]["bbox"].update(x2=5), "text_info.json[0].segment[0].bbox: degenerate"),
    (lambda r: r[1]["segment"][1]["bbox"].update(y2=90), "text_info.json[1].segment[1].bbox: box (0, 0, 100, 90) is "
                                                        "outside the 100x80 image"),
    (lambda r: r[0]["segment"][0].update(bbox={"x2": 30, "x1": 10, "y1": 10, "y2": 40, "width": 100, "height": 80}),
     "order"),
    (lambda r: r[0]["segment"][0].update(bbox=[10, 10, 30, 40, 100]), "needs six numbers"),
    (lambda r: r[2]["segment"][0].update(category_id=7), "category 'ship' has several ids: [1, 7]"),
    (lambda r: r[2]["segment"][1].update(category="ship"), "category_id 0 is used for several names"),
    (lambda r: r[0]["segment"][0].update(category_id="1"), "text_info.json[0].segment[0].category_id: must be an "
                                                            "integer"),
    (lambda r: [r[0].pop(k) for k in ("brief_caption", "global_caption", "detailed_caption")], "no caption"),
    (lambda r: r[1].update(global_filepath="nope.jpg"), "nope.jpg does not exist"),
    (lambda r: [o["bbox"].update(width=120) for o in r[2]["segment"]], "image is 100x80 but its boxes say 120x80"),
    (lambda r: r[1]["segment"][0]["bbox"].update(width=90), "boxes disagree on the image size"),
])
def test_validate_catches(good, mutate, expect):
    d, recs = good
    recs = copy.deepcopy(recs)
    mutate(recs)
    _write(d, recs)
    errs = _errors(d)
    assert any(expect in e for e in errs), errs


OLD_STYLE = "relative to the JSON's folder"


def test_validate_accepts_both_conventions(good, tmp_path, capsys):
    d, recs = good
    rep = validate_mgrs(d)  # official: relative to global_imgs/
    assert rep.ok and rep.images_checked == 3 and not any(OLD_STYLE in w.message for w in rep.warnings)
    assert validate_mgrs(d, root=d / "global_imgs").ok  # root = the official --root-train-img-dir
    old = copy.deepcopy(recs)
    for r in old:
        r["global_filepath"] = "global_imgs/" + r["global_filepath"]
    _write(d, old)  # relative to the JSON's folder (earlier builds, other tools): accepted, with one warning
    rep = validate_mgrs(d)
    assert rep.ok and rep.images_checked == 3, rep.format()
    w = [x.message for x in rep.warnings if OLD_STYLE in x.message]
    assert len(w) == 1 and w[0].startswith("3 records") and f"--root-train-img-dir {d}" in w[0]
    rep = validate_mgrs(d, root=d)  # an explicit root is the folder the paths are relative to: no warning
    assert rep.ok and not any(OLD_STYLE in x.message for x in rep.warnings)
    assert any("does not exist" in e for e in _errors(d, root=d / "global_imgs"))
    mixed = copy.deepcopy(recs)
    mixed[0]["global_filepath"] = "global_imgs/0.jpg"
    _write(d, mixed)
    rep = validate_mgrs(d)
    assert rep.ok and [x.message[:9] for x in rep.warnings if OLD_STYLE in x.message] == ["1 records"]
    # sub-folders below global_imgs/ stay in the path
    (d / "global_imgs" / "sub").mkdir()
    (d / "global_imgs" / "2.jpg").rename(d / "global_imgs" / "sub" / "2.jpg")
    mixed[2]["global_filepath"] = "sub/2.jpg"
    _write(d, mixed)
    assert validate_mgrs(d).ok
    # a missing image names both folders tried
    mixed[1]["global_filepath"] = "nope.jpg"
    _write(d, mixed)
    errs = _errors(d)
    assert len(errs) == 1 and f"nope.jpg does not exist in {d / 'global_imgs'} or {d}" in errs[0]
    # the CLI's --root
    _write(d, recs[:2])
    assert main(["data", "validate", str(d), "--root", str(d / "global_imgs"), "--no-progress"]) == 0
    assert main(["data", "validate", str(d), "--root", str(d), "--no-progress"]) == 1
    capsys.readouterr()


def test_caption_finds_images_both_ways(good, tmp_path):
    d, recs = good
    empty = copy.deepcopy(recs)
    for r in empty:
        r["segment"] = []  # no boxes: the image size must be read from the image itself
    _write(d, empty)
    res = recaption_mgrs(d, out=tmp_path / "a.json", progress=False)
    assert res["records"] == 3 and res["caption_failed"] == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert [r["global_filepath"] for r in a] == ["0.jpg", "1.jpg", "2.jpg"]
    recaption_mgrs(d / "text_info.json", out=tmp_path / "b.json", root=d / "global_imgs", progress=False)
    assert json.loads((tmp_path / "b.json").read_text()) == a
    for r in empty:
        r["global_filepath"] = "global_imgs/" + r["global_filepath"]
    _write(d, empty)
    assert recaption_mgrs(d, out=tmp_path / "c.json", progress=False)["records"] == 3
    assert recaption_mgrs(d, out=tmp_path / "e.json", root=d, progress=False)["records"] == 3
    with pytest.raises(BuildError, match="global_imgs/0.jpg not found in"):
        recaption_mgrs(d, out=tmp_path / "d.json", root=d / "global_imgs", progress=False)


def test_validate_bad_images_and_json(good):
    d, recs = good
    (d / "global_imgs" / "1.jpg").write_bytes(Image.open(d / "global_imgs" / "0.jpg").tobytes()[:50])
    errs = _errors(d)
    assert len(errs) == 1 and "1.jpg does not decode" in errs[0]
    assert _errors(d, check_images=False) == []
    (d / "text_info.json").write_text('[{"global_filepath": "x",}]')
    errs = _errors(d)
    assert len(errs) == 1 and "not valid JSON" in errs[0] and "line 1" in errs[0]
    (d / "text_info.json").write_text('{"a": 1}')
    assert "top level must be a JSON list" in _errors(d)[0]
    # the build's report handed over instead of its records: the message points at them
    (d / "text_info.json").write_text(json.dumps(recs))
    (d / "build_report.json").write_text('{"records": 1}')
    report = validate_mgrs(d / "build_report.json", check_images=False)
    assert any("records of this build are in" in f.message and "text_info.json" in f.message for f in report.findings)


def test_validate_cli(good, tmp_path, capsys):
    d, recs = good
    assert main(["data", "validate", str(d), "--no-progress"]) == 0
    recs = copy.deepcopy(recs)
    recs[0]["segment"][0]["bbox"]["x2"] = 5
    _write(d, recs)
    report = tmp_path / "r.json"
    assert main(["data", "validate", str(d / "text_info.json"), "--no-progress", "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "1 errors" in out and "segment[0].bbox" in out
    assert json.loads(report.read_text())["ok"] is False
    assert main(["data", "validate", str(tmp_path / "missing")]) == 2


def test_stats_numbers_and_png(good, tmp_path, capsys):
    d, recs = good
    st = mgrs_stats(d)
    assert st["images"] == 3 and st["objects"] == 6
    assert st["objects_per_image"]["mean"] == 2.0 and st["objects_per_image"]["max"] == 3
    assert [(c["name"], c["id"], c["objects"], c["images"]) for c in st["categories"]] == [
        ("ship", 1, 4, 3), ("airplane", 0, 2, 2)]
    # airplane boxes are 100x80 -> side 89.4 (>= 64); ship boxes 20x30, 21x30, 22x30, 20x30 -> sides 24.5..25.7
    bins = {(b["from"], b["to"]): b["objects"] for b in st["box_side"]["bins"]}
    assert bins[(16, 32)] == 4 and bins[(64, 128)] == 2 and st["box_side"]["stage2_usable"] == 2
    png = plot_stats(st, tmp_path / "s.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert main(["data", "stats", str(d), "--png", str(tmp_path / "c.png"), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "objects per image      mean 2.00" in out and "ship" in out and "[  16,   32)" in out
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert json.loads((tmp_path / "s.json").read_text())["objects"] == 6
