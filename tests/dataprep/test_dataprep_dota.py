"""End to end: `farslip data build --format dota` on the tiny DOTA fixture, checked by hand."""
import json
from pathlib import Path

import pytest
from support.fixtures import fixture_module, objects_by_file, open_like_official, read_records
from PIL import Image

from farslip.dataprep import BuildConfig, BuildError, build_mgrs, recaption_mgrs, validate_mgrs
from farslip.cli import main

maker = fixture_module("dota")


@pytest.fixture
def dota(tmp_path):
    return maker.make(tmp_path / "dota")


def _cfg(dota, out, **kw):
    return BuildConfig(format="dota", images=str(dota / "images"), labels=str(dota / "labelTxt"), out=str(out), **kw)


def test_build_matches_hand_checked_boxes(dota, tmp_path):
    out = tmp_path / "out"
    s = build_mgrs(_cfg(dota, out), progress=False)
    recs = read_records(out)
    assert objects_by_file(recs) == {k: [(c, b) for c, b in v] for k, v in maker.EXPECTED.items()}
    r = recs[1]
    assert list(r) [:5] == ["global_filepath", "global_caption", "detailed_caption", "brief_caption", "segment"]
    assert list(r["segment"][0]["bbox"]) == ["x1", "y1", "x2", "y2", "width", "height"]
    assert list(r["segment"][0]["bbox"].values())[4:] == [800, 700]
    assert recs[2]["segment"][0]["bbox"]["width"] == 400  # P0004 is smaller than a chip: kept whole
    for rec in recs:
        with Image.open(out / "global_imgs" / rec["global_filepath"]) as im:
            assert im.size == tuple(list(rec["segment"][0]["bbox"].values())[4:])
        assert "storage tank" in rec["global_caption"] or "airplane" in rec["global_caption"] \
            or "harbor" in rec["global_caption"]
    assert s["images_written"] == 3 and s["objects"] == 5
    c = s["counts"]
    assert c["dropped_degenerate"] == 1 and c["cut_at_chip_border"] == 2 and c["objects_read"] == 6
    assert s["problems"] == {"missing-image": 1, "missing-label": 1, "bad-record": 1, "degenerate": 1}
    report = json.loads((out / "build_report.json").read_text())
    assert {p["kind"] for p in report["problems"]} == {"missing-image", "missing-label", "bad-record", "degenerate"}
    assert validate_mgrs(out).ok
    from farslip.data.records import MGRSRecords  # the project's training reader takes it as is

    mg = MGRSRecords(out / "text_info.json")
    read = [mg[i] for i in range(len(mg))]
    assert [len(r.objects) for r in read] == [1, 2, 2] and not any(r.notes for r in read)
    assert read[1].objects[0].box == (500, 300, 700, 400) and read[1].caption == recs[1]["global_caption"]


def test_records_open_like_the_official_json_dataset(dota, tmp_path):
    """--train-data OUT/text_info.json --root-train-img-dir OUT/global_imgs/: the official JsonDataset opens
    os.path.join(root_img_dir, global_filepath), so global_filepath must be relative to global_imgs/."""
    out = tmp_path / "out"
    build_mgrs(_cfg(dota, out), progress=False)
    recs = read_records(out)
    assert [r["global_filepath"] for r in recs] == ["P0001__0_0.jpg", "P0001__200_0.jpg", "P0004.jpg"]
    sizes = open_like_official(out / "text_info.json", out / "global_imgs")
    assert sizes == [tuple(list(r["segment"][0]["bbox"].values())[4:]) for r in recs]
    rep = validate_mgrs(out)
    assert rep.ok and rep.images_checked == 3 and not any("JSON's folder" in w.message for w in rep.warnings)
    assert validate_mgrs(out, root=out / "global_imgs").ok  # --root as the official --root-train-img-dir
    # `farslip data caption` keys template captions by global_filepath as the build does: the same openings
    # (only the detailed caption differs: records do not keep the DOTA gsd the build put in it)
    recaption_mgrs(out, out=tmp_path / "re.json", progress=False)
    re = json.loads((tmp_path / "re.json").read_text())
    assert [(r["global_caption"], r["brief_caption"]) for r in re] == [
        (r["global_caption"], r["brief_caption"]) for r in recs]
    assert not validate_mgrs(out, root=out).ok  # relative to global_imgs/, not to OUT
    from farslip.data.records import MGRSRecords

    for root in (None, out / "global_imgs"):  # the project's reader, with and without data.image_root
        mg = MGRSRecords(out / "text_info.json", root)
        assert [Path(mg[i].path) for i in range(len(mg))] == [out / "global_imgs" / r["global_filepath"]
                                                             for r in recs]


def test_chip_pixels_come_from_their_window(dota, tmp_path):
    out = tmp_path / "out"
    build_mgrs(_cfg(dota, out, image_format="png"), progress=False)
    with Image.open(out / "global_imgs" / "P0001__200_0.png") as im:
        assert im.size == (800, 700)
        assert im.getpixel((0, 0)) == (200, 0, 128)  # R = x mod 256 of the source scene
        assert im.getpixel((100, 50)) == (44, 50, 128)  # x = 300 -> 300 mod 256


def test_category_ids_stable(dota, tmp_path):
    build_mgrs(_cfg(dota, tmp_path / "a"), progress=False)
    build_mgrs(_cfg(dota, tmp_path / "b", limit=1), progress=False)  # only P0001: fewer categories seen
    a = json.loads((tmp_path / "a" / "categories.json").read_text())
    b = json.loads((tmp_path / "b" / "categories.json").read_text())
    assert a == b  # ids come from DOTA's official vocabulary, not from what this run happened to meet
    assert a["airplane"] == 0 and len(a) == 18
    ids = {o["category"]: o["category_id"] for r in read_records(tmp_path / "a") for o in r["segment"]}
    assert all(a[n] == i for n, i in ids.items())
    # a fixed table wins, unknown names get the next ids and a problem
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"storage tank": 0, "airplane": 1}))
    s = build_mgrs(_cfg(dota, tmp_path / "c", categories=str(table)), progress=False)
    c = json.loads((tmp_path / "c" / "categories.json").read_text())
    assert c == {"storage tank": 0, "airplane": 1, "harbor": 2, "small vehicle": 3}
    assert s["problems"]["unknown-category"] == 2


def test_difficult_and_category_map(dota, tmp_path):
    s = build_mgrs(_cfg(dota, tmp_path / "o", drop_difficult=True), progress=False)
    assert s["counts"]["dropped_difficult"] == 1
    cats = {c for v in objects_by_file(read_records(tmp_path / "o")).values() for c, _ in v}
    assert "airplane" not in cats
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"harbor": None, "storage-tank": "oil tank"}))
    s = build_mgrs(_cfg(dota, tmp_path / "m", category_map=str(m)), progress=False)
    cats = {c for v in objects_by_file(read_records(tmp_path / "m")).values() for c, _ in v}
    assert "harbor" not in cats and "oil tank" in cats and s["counts"]["dropped_category"] == 1


def test_resume_and_options_guard(dota, tmp_path):
    out = tmp_path / "out"
    s1 = build_mgrs(_cfg(dota, out, limit=1), progress=False)
    assert s1["images_written"] == 2 and s1["resumed"] == 0
    journal = out / ".farslip_build" / "journal.jsonl"
    with open(journal, "a") as f:
        f.write('{"key": "P0004", "records": [')  # a line cut short by a killed run
    s2 = build_mgrs(_cfg(dota, out), progress=False)
    assert s2["resumed"] == 1 and s2["images_written"] == 3
    fresh = tmp_path / "fresh"
    build_mgrs(_cfg(dota, fresh), progress=False)
    assert (out / "text_info.json").read_text() == (fresh / "text_info.json").read_text()
    # a smaller run in the same folder writes a smaller JSON but keeps the chips the journal accounts for
    assert build_mgrs(_cfg(dota, out, limit=1), progress=False)["images_written"] == 2
    assert (out / "global_imgs" / "P0004.jpg").is_file()
    (out / "global_imgs" / ".x.jpg.tmp").write_bytes(b"left by a killed run")
    s = build_mgrs(_cfg(dota, out), progress=False)
    assert s["resumed"] == 2 and validate_mgrs(out).ok
    assert sorted(p.name for p in (out / "global_imgs").iterdir()) == [
        "P0001__0_0.jpg", "P0001__200_0.jpg", "P0004.jpg"]
    with pytest.raises(BuildError, match="chip_size"):
        build_mgrs(_cfg(dota, out, chip_size=512, overlap=100), progress=False)
    s3 = build_mgrs(_cfg(dota, out, chip_size=512, overlap=100), overwrite=True, progress=False)
    assert s3["resumed"] == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "text_info.json").write_text("[]")
    with pytest.raises(BuildError, match="overwrite"):
        build_mgrs(_cfg(dota, foreign), progress=False)


def test_workers_give_identical_output(dota, tmp_path):
    build_mgrs(_cfg(dota, tmp_path / "seq"), progress=False)
    build_mgrs(_cfg(dota, tmp_path / "par"), workers=2, progress=False)
    assert (tmp_path / "seq" / "text_info.json").read_bytes() == (tmp_path / "par" / "text_info.json").read_bytes()


def test_unreadable_image_reported_not_fatal(dota, tmp_path):
    (dota / "images" / "P0004.png").write_bytes(b"not a png")
    s = build_mgrs(_cfg(dota, tmp_path / "out"), progress=False)
    assert s["images_written"] == 2 and s["problems"]["bad-image"] == 1


def test_cli_build(dota, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["data", "build", "--format", "dota", "--images", str(dota / "images"), "--labels",
               str(dota / "labelTxt"), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "images written  3" in printed and "missing-image" in printed
    assert (out / "text_info.json").is_file()
    rc = main(["data", "build", "--format", "dota", "--images", str(dota / "images"), "--labels",
               str(dota / "labelTxt"), "--out", str(out), "--no-progress", "--strict"])
    assert rc == 1  # problems met
    rc = main(["data", "build", "--format", "dota", "--images", str(tmp_path / "none"), "--labels",
               str(dota / "labelTxt"), "--out", str(out), "--no-progress"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
