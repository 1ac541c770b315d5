"""Readers, views and the bad-data policy of the training data path."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from farslip.core.problems import BadInput
from farslip.data import MGRSRecords, ViewConfig, ViewMaker, expand_shards, read_bbox
from farslip.data.loader import LoaderConfig, TrainLoader
from farslip.data.records import Record, RegionObject
from farslip.data.shards import shard_records
from farslip.train import load_config, train

from support.fixtures import REPO, load_maker, tiny_overrides


def test_bbox_read_by_order():
    assert read_bbox({"x1": 1, "y1": 2, "x2": 3, "y2": 4, "W": 10, "H": 20}, "r") == ([1, 2, 3, 4], (10, 20))
    assert read_bbox({"a": 5, "b": 6, "c": 7, "d": 8}, "r") == ([5, 6, 7, 8], None)
    assert read_bbox([1, 2, 3, 4, 5, 6], "r")[0] == [1, 2, 3, 4]
    with pytest.raises(BadInput, match="field 'bbox'"):
        read_bbox({"x1": 1}, "file.json record 3")


def test_mgrs_quirks_are_read(tmp_path):
    records = MGRSRecords(load_maker("mgrs_quirky")(tmp_path))
    assert len(records) == 15
    r0 = records[0]
    assert r0.caption.startswith("a satellite image with")
    assert any(o.caption and o.category_id == -1 for o in r0.objects)          # free-text region caption
    assert {o.category for o in records[1].objects if o.category} <= {"airplane", "ship", "storage tank"}
    with pytest.raises(BadInput, match="record 13.*global_filepath.*missing.png"):
        records[13]
    with pytest.raises(BadInput, match="record 14.*caption"):
        records[14]
    detailed = MGRSRecords(tmp_path / "text_info.json", caption="detailed")
    assert detailed[0].caption.startswith("a detailed description")


def test_random_crops_follow_torchvision_and_boxes_are_exact():
    img = Image.fromarray(np.arange(120 * 90 * 3, dtype=np.uint8).reshape(90, 120, 3))
    maker = ViewMaker(ViewConfig(size=32, views="crops", num_crops=4))
    sample = maker(Record("r", "record 0", "c"), img, seed=7)
    assert sample["crop_images"].shape == (4, 3, 32, 32) and sample["images"].shape == (3, 32, 32)
    torch.manual_seed(7)
    t = torch.zeros(3, 90, 120)
    for k in range(4):
        i, j, h, w = RandomResizedCrop.get_params(t, scale=[0.3, 0.7], ratio=[3 / 4, 4 / 3])
        assert sample["crop_boxes"][k].tolist() == pytest.approx([j / 120, i / 90, (j + w) / 120, (i + h) / 90])
    again = maker(Record("r", "record 0", "c"), img, seed=7)  # deterministic by seed
    assert torch.equal(again["crop_images"], sample["crop_images"])


def test_grid_crops():
    img = Image.new("RGB", (100, 60))
    sample = ViewMaker(ViewConfig(size=16, views="grids", num_crops=6))(Record("r", "record 0", "c"), img, seed=0)
    boxes = sample["crop_boxes"]
    assert boxes.shape == (6, 4)
    assert boxes[0].tolist() == pytest.approx([0, 0, 1 / 3, 0.5]) and boxes[-1].tolist() == pytest.approx([2 / 3, .5, 1, 1])


def test_regions_select_clip_pad_and_mask():
    objects = [RegionObject((0, 0, 100, 100), "ship", 1),           # big enough
               RegionObject((10, 10, 12, 12), "car", 2),            # too small (area < 8^2)
               RegionObject((150, -20, 260, 80), "tank", 3),        # out of bounds: clipped to (150, 0, 200, 80)
               RegionObject((50, 50, 50, 90), "plane", 0),          # degenerate
               RegionObject((20, 20, 60, 60), None, -1, "a pier")]  # caption only
    notes = []
    maker = ViewMaker(ViewConfig(size=16, views="regions", max_regions=4, min_region_size=8, max_region_size=None))
    out = maker.regions(torch.zeros(3, 100, 200, dtype=torch.uint8), objects, seed=0, source="r", notes=notes)
    valid = out["region_valid"]
    assert valid.tolist().count(True) == 3 and out["region_images"].shape == (4, 3, 16, 16)
    got = {t: (b.tolist(), int(l)) for t, b, l, v in zip(out["region_texts"], out["region_boxes"],
                                                         out["region_labels"], valid) if v}
    assert got["a satellite image of tank"][0] == pytest.approx([0.75, 0.0, 1.0, 0.8])
    assert got["a satellite image of ship"] == ([0.0, 0.0, 0.5, 1.0], 1)
    assert got["a pier"][1] == -1
    assert out["region_labels"][~valid].tolist() == [-1]
    assert {n["message"].split()[0] for n in notes} == {"box", "degenerate"}
    # At most K; shuffled by seed.
    few = ViewMaker(ViewConfig(size=16, views="regions", max_regions=1, min_region_size=8))
    picks = {few.regions(torch.zeros(3, 100, 200, dtype=torch.uint8), objects, s, "r", [])["region_texts"][0]
             for s in range(20)}
    assert len(picks) > 1


def test_webdataset_keys_braces_and_bad_members(tmp_path):
    folder = load_maker("rs5m_shards")(tmp_path)
    shards = expand_shards(f"{folder}/{{pub11-train-{{0000..0001}},rs3-train-0000}}.tar")
    assert [Path(s).name for s in shards] == ["pub11-train-0000.tar", "pub11-train-0001.tar", "rs3-train-0000.tar"]
    recs = list(shard_records(shards[0]))
    assert len(recs) == 8 and recs[0].caption.startswith("a satellite image of farmland")
    plain = list(shard_records(shards[2]))
    bad = [r for r in plain if isinstance(r, BadInput)]
    assert len(bad) == 1 and bad[0].problem.field == "caption"  # the corrupt jpg is found when decoded
    assert expand_shards([str(shards[0]), str(shards[1])]) == shards[:2]


def test_shards_are_dealt_disjointly_over_ranks(tmp_path):
    folder = load_maker("rs5m_shards")(tmp_path)
    import open_clip

    tok = open_clip.get_tokenizer("Test-Tiny-ViT")
    cfg = LoaderConfig("webdataset", f"{folder}/pub11-train-{{0000..0001}}.tar", workers=0)
    seen = []
    for rank in range(2):
        loader = TrainLoader(cfg, ViewConfig(size=32, views="none"), tok, batch_size=2, rank=rank, world=2)
        assert loader.steps_per_epoch == 4
        seen.append([tuple(row.tolist()) for b in loader.epoch(0) for row in b["texts"]])
    assert len(seen[0]) == len(seen[1]) == 8
    assert not set(seen[0]) & set(seen[1])


def test_bad_data_is_skipped_counted_and_reported(tmp_path, tiny_arch):
    cfg = load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", tiny_overrides(tmp_path, 2, steps=3))
    cfg.optim.epochs, cfg.optim.max_steps = 1, None  # one full epoch: every record is read once
    result = train(cfg)
    assert result["skipped_records"] == 3            # corrupt image, missing image, record without caption
    assert result["object_fixes"] > 0                 # boxes clipped or dropped
    lines = [json.loads(x) for x in (Path(cfg.run.out) / "skipped.jsonl").read_text().splitlines()]
    records = {(x["record"].split()[-1], x["field"]) for x in lines if x["kind"] == "bad-record"}
    assert records == {("12", "image"), ("13", "global_filepath"), ("14", "caption")}
    assert all(x["path"].endswith("text_info.json") and x["record"].startswith("record ") for x in lines)


def test_bad_data_ceiling_stops_with_a_clear_message(tmp_path, tiny_arch):
    over = tiny_overrides(tmp_path, 2, steps=3)
    over["data"]["max_bad_samples"] = 0
    over["optim"].update(max_steps=None, epochs=1)
    with pytest.raises(RuntimeError, match="unusable.*max_bad_samples=0"):
        train(load_config(REPO / "configs" / "stage2_vitb16_mgrs.yaml", over))


def _toy_csv(folder: Path, n: int = 64) -> Path:
    """Red images are captioned 'red', blue ones 'blue': a learnable toy for the loss."""
    folder.mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        colour = ["red", "blue", "green", "yellow"][i % 4]
        rgb = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 230, 20)}[colour]
        arr = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.png")
        rows.append({"filepath": f"{i}.png", "title": f"a {colour} square"})
    with open(folder / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["filepath", "title"])
        w.writeheader()
        w.writerows(rows)
    return folder / "pairs.csv"


def test_loss_falls_on_a_learnable_toy(tmp_path, tiny_arch):
    over = tiny_overrides(tmp_path, 1, steps=40)
    over["data"] = {"kind": "csv", "train": str(_toy_csv(tmp_path / "toy")), "views": "none", "workers": 0}
    over["optim"].update(batch_size=8, lr=2e-3, warmup=5, epochs=10, weight_decay=0.0)
    over["objective"] = {"preset": "vanilla"}
    cfg = load_config(REPO / "configs" / "vanilla_vitb16_rs5m.yaml", over)
    train(cfg)
    losses = [json.loads(x)["total"] for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_category_ids_missing_or_malformed_are_assigned_stably(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    items = [{"global_filepath": "a.png", "global_caption": "x", "segment": [
        {"bbox": [0, 0, 10, 10], "category": "ship", "category_id": "4"},
        {"bbox": [0, 0, 10, 10], "category": "harbor"},
        {"bbox": [0, 0, 10, 10], "category": "airplane", "category_id": "n/a"}]}]
    (tmp_path / "t.json").write_text(json.dumps(items))
    objs = MGRSRecords(tmp_path / "t.json")[0].objects
    assert [(o.category, o.category_id) for o in objs] == [("ship", 4), ("harbor", 6), ("airplane", 5)]
