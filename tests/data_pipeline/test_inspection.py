"""`farslip data validate|stats` on webdataset shards and image-caption CSVs: every sample read as the trainer
reads it, each planted fault found and named (fixtures: tests/data/pairs_faulty/make.py)."""
from __future__ import annotations

import json

import pytest

from farslip.data.inspection import data_stats, detect_kind, validate_data

from support.fixtures import fixture_module
from support.hostile import assert_user_error, run_cli

FIXTURE = fixture_module("pairs_faulty")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return FIXTURE.make(tmp_path_factory.mktemp("pairs"))


def _found(rep) -> set[tuple[str, str]]:
    return {(f.level, f.where) for f in rep.findings}


def test_shards_every_planted_fault_is_found(pairs):
    rep = validate_data(f"{pairs}/shards/{{good,faulty,broken}}-0000.tar")
    assert rep.kind == "webdataset" and rep.parts == FIXTURE.EXPECTED_SHARDS["samples"]
    for level, where, fragment in FIXTURE.EXPECTED_SHARDS["findings"]:
        assert any(f.level == level and f.where == where and fragment in f.message for f in rep.findings), \
            (level, where, fragment, [str(f) for f in rep.findings])
    assert len(rep.findings) == len(FIXTURE.EXPECTED_SHARDS["findings"])  # and nothing in the good shard
    assert rep.images_checked == 6 + 8 + 3 and not rep.ok
    text = rep.format()
    assert text.splitlines()[0].endswith("3 shards, 18 samples, 17 images checked: 5 errors, 2 warnings")
    assert "  faulty-0000.tar: 9 samples" in text
    assert validate_data(f"{pairs}/shards/good-0000.tar").ok


def test_csv_every_planted_fault_is_found(pairs):
    rep = validate_data(str(pairs / "pairs.csv"))
    assert rep.kind == "csv" and rep.records == FIXTURE.EXPECTED_CSV["rows"]
    for level, where, fragment in FIXTURE.EXPECTED_CSV["findings"]:
        assert any(f.level == level and f.where == where and fragment in f.message for f in rep.findings), \
            (level, where, fragment, [str(f) for f in rep.findings])
    assert len(rep.findings) == len(FIXTURE.EXPECTED_CSV["findings"])
    wrong = validate_data(str(pairs / "pairs.csv"), caption_key="caption")
    assert [f.message for f in wrong.errors] == ["no column 'caption' (separator ','); columns: ['filepath', 'title']"]


def test_the_kind_follows_the_path(pairs):
    assert detect_kind(f"{pairs}/shards/{{good,faulty}}-0000.tar") == "webdataset"
    assert detect_kind(str(pairs / "shards")) == "webdataset"
    assert detect_kind(str(pairs / "pairs.csv")) == "csv"
    assert detect_kind(str(pairs / "text_info.json")) == "mgrs"


def test_stats_count_samples_per_shard_and_rows(pairs):
    st = data_stats(str(pairs / "shards"))
    assert st["samples_per_shard"] == {"broken-0000.tar": 3, "faulty-0000.tar": 9, "good-0000.tar": 6}
    assert st["unreadable_shards"] == ["broken-0000.tar"] and st["member_keys"]["caption"] == 6
    st = data_stats(str(pairs / "pairs.csv"))
    assert (st["rows"], st["images"], st["missing_images"]) == (7, 6, 1)


def test_the_commands(pairs, tmp_path, capsys):
    outcome = run_cli(capsys, "data", "validate", f"{pairs}/shards/faulty-0000.tar", "--report", tmp_path / "r.json",
                      "--no-progress")
    assert outcome.code == 1 and "faulty-0000.tar[f_001]" in outcome.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["kind"] == "webdataset" and report["parts"] == {"faulty-0000.tar": 9}
    assert run_cli(capsys, "data", "validate", f"{pairs}/shards/good-0000.tar", "--no-progress").code == 0
    assert run_cli(capsys, "data", "validate", pairs / "pairs.csv", "--no-progress").code == 1
    out = run_cli(capsys, "data", "stats", pairs / "shards", "--json", tmp_path / "s.json")
    assert out.code == 0 and "faulty-0000.tar" in out.out and "samples                18" in out.out
    assert json.loads((tmp_path / "s.json").read_text())["samples"] == 18
    assert_user_error(run_cli(capsys, "data", "validate", f"{pairs}/shards/none-{{0000..0001}}.tar"),
                      "none-0000.tar", "0 of 2 shards exist")
    assert_user_error(run_cli(capsys, "data", "stats", pairs / "pairs.csv", "--png", tmp_path / "x.png"), "--png")


def test_a_tab_separated_csv(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\na.png\ta field, with a comma\n")
    assert validate_data(str(tmp_path / "pairs.tsv")).ok  # .tsv: tab by default
    (tmp_path / "pairs.txt").write_text("filepath\ttitle\na.png\ta field\n")
    assert run_cli(capsys, "data", "validate", tmp_path / "pairs.txt", "--kind", "csv", "--sep", "\\t",
                   "--no-progress").code == 0
