"""The synthetic RS world: deterministic, fast, valid in every format, read by the project's own readers."""
import csv
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from support.fixtures import open_like_official
from PIL import Image

from farslip.dataprep import OVSS_CLASSES, SCENES, render_scene, synth_world, validate_mgrs
from farslip.dataprep.synth import OBJECT_LABEL
from farslip.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = synth_world(out, n=40, seed=7, n_test=16, shard_size=32, progress=False)
    return out, summary


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = synth_world(tmp_path / "a", n=12, seed=3, n_test=8, progress=False)
    b = synth_world(tmp_path / "b", n=12, seed=3, n_test=8, progress=False)
    assert a == b
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert ta.keys() == tb.keys() and len(ta) > 50
    assert [k for k in ta if ta[k] != tb[k]] == []
    synth_world(tmp_path / "c", n=12, seed=4, n_test=8, progress=False)
    tc = _tree(tmp_path / "c")
    assert tc["mgrs/global_imgs/000000.jpg"] != ta["mgrs/global_imgs/000000.jpg"]


def test_mgrs_json(world):
    out, s = world
    recs = json.loads((out / "mgrs" / "text_info.json").read_text())
    assert len(recs) == 40 == s["train_images"]
    ids = s["categories"]
    n_obj = 0
    for r in recs:
        assert r["global_filepath"] == Path(r["global_filepath"]).name  # relative to global_imgs/ (official)
        for k in ("global_caption", "detailed_caption", "brief_caption"):
            assert isinstance(r[k], str) and r[k]
        assert r["scene"] in r["global_caption"].lower() and r["scene"] in r["brief_caption"].lower()
        with Image.open(out / "mgrs" / "global_imgs" / r["global_filepath"]) as im:
            assert im.size == (224, 224) and im.format == "JPEG"
        for o in r["segment"]:
            assert list(o["bbox"]) == ["x1", "y1", "x2", "y2", "width", "height"]
            x1, y1, x2, y2, w, h = o["bbox"].values()
            assert 0 <= x1 < x2 <= w == 224 and 0 <= y1 < y2 <= h == 224
            assert ids[o["category"]] == o["category_id"]
            n_obj += 1
        cats = {o["category"] for o in r["segment"]}
        for c in cats:  # the caption names every category present (as a plural or singular)
            assert c in r["global_caption"], (c, r["global_caption"])
    assert n_obj == s["objects"] > 0
    rep = validate_mgrs(out / "mgrs")
    assert rep.ok and rep.images_checked == 40 and not any("JSON's folder" in w.message for w in rep.warnings), \
        rep.format()
    # --train-data OUT/mgrs/text_info.json --root-train-img-dir OUT/mgrs/global_imgs/ (official JsonDataset)
    assert open_like_official(out / "mgrs" / "text_info.json", out / "mgrs" / "global_imgs") == [(224, 224)] * 40


def test_rs5m_shards(world):
    out, s = world
    shards = sorted((out / "rs5m").glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]  # 40 samples, 32 per shard
    samples = defaultdict(dict)
    for p in shards:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples[key][ext] = tar.extractfile(m).read()
    assert len(samples) == 40
    captions = {r[0]: r[1] for r in csv.reader(open(out / "captions.csv"))}
    for key, smp in samples.items():
        assert set(smp) == {"img_content", "img_name", "caption"}
        with Image.open(io.BytesIO(smp["img_content"])) as im:
            assert im.size == (224, 224)
        name = smp["img_name"].decode()
        assert name == f"{key}.jpg"
        assert smp["caption"].decode("utf-8") == captions[f"mgrs/global_imgs/{name}"]
        assert smp["img_content"] == (out / "mgrs" / "global_imgs" / name).read_bytes()


def test_csvs_and_ovss(world):
    out, s = world
    with open(out / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filepath", "title"] and len(rows) == 40
    assert all((out / r["filepath"]).is_file() for r in rows)
    names = (out / "cls" / "classnames.txt").read_text().splitlines()
    assert names == list(SCENES)
    with open(out / "cls" / "test.csv", newline="") as f:
        cls = list(csv.DictReader(f))
    assert list(cls[0]) == ["filepath", "label"] and len(cls) == 16
    assert {int(r["label"]) for r in cls} == set(range(len(SCENES)))
    assert all((out / "cls" / r["filepath"]).is_file() for r in cls)
    with open(out / "retrieval" / "test.csv", newline="") as f:
        ret = list(csv.DictReader(f))
    assert list(ret[0]) == ["filepath", "title"] and len(ret) == 32  # two captions per image
    assert all((out / "retrieval" / r["filepath"]).is_file() for r in ret)
    for c, r in zip(cls, ret[::2]):  # the retrieval captions name the image's scene class
        assert c["filepath"] == r["filepath"] and SCENES[int(c["label"])] in r["title"]
    classes = [line.split(",") for line in (out / "ovss" / "classes.txt").read_text().splitlines()]
    assert classes[0] == ["background"] and ["building", "roof", "house"] in classes
    assert len(classes) == len(OVSS_CLASSES)
    imgs = sorted((out / "ovss" / "img_dir" / "val").glob("*.png"))
    anns = sorted((out / "ovss" / "ann_dir" / "val").glob("*.png"))
    assert [p.name for p in imgs] == [p.name for p in anns] and len(imgs) == 16
    seen = set()
    for p in anns:
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (224, 224)
            a = np.asarray(im)
        assert a.max() < len(classes)
        seen |= set(np.unique(a).tolist())
    assert len(seen) >= 8
    w = json.loads((out / "world.json").read_text())
    assert w == s and w["seed"] == 7 and w["paths"]["rs5m"] == ["rs5m/shard-000000.tar", "rs5m/shard-000001.tar"]
    for key in ("mgrs", "captions_csv", "cls_csv", "cls_classnames", "retrieval_csv", "regions_csv",
                "regions_classnames", "ovss_classes"):
        assert (out / w["paths"][key]).is_file()


def test_global_captions_say_what_not_where(world):
    """The paper's setting: global captions name the scene, objects and main land covers, never a position."""
    from farslip.dataprep.captions import _POSITIONS
    from farslip.dataprep.synth import land_cover_fractions

    out, _ = world
    with open(out / "retrieval" / "test.csv", newline="") as f:
        globals_ = [r["title"] for r in list(csv.DictReader(f))[::2]]
    positions = [p for row in _POSITIONS for p in row]
    for i, caption in enumerate(globals_):
        assert not any(p in caption for p in positions), caption
        with Image.open(out / "ovss" / "ann_dir" / "val" / f"{i:06d}.png") as im:
            fractions = land_cover_fractions(np.asarray(im))
        for name, frac in fractions.items():  # every land cover over a third of the image is named
            if frac > 1 / 3:
                assert name in caption, (name, frac, caption)


def test_region_crops(world):
    """Held-out object crops for stage 2's zero-shot region-category accuracy: one per category per image."""
    from farslip.dataprep import OBJECT_CATEGORIES

    out, s = world
    assert (out / "regions" / "classnames.txt").read_text().splitlines() == list(OBJECT_CATEGORIES)
    with open(out / "regions" / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filepath", "label"] and len(rows) == sum(s["test_region_counts"].values()) > 8
    assert len({int(r["label"]) for r in rows}) >= 4
    per_image = defaultdict(list)
    for r in rows:
        per_image[r["filepath"].split("-")[0]].append(int(r["label"]))
        with Image.open(out / "regions" / r["filepath"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    assert all(len(v) == len(set(v)) for v in per_image.values())


def test_project_readers_read_the_world(world):
    """The readers of farslip.data and farslip.eval accept every format synth writes."""
    out, s = world
    from farslip.data.records import CaptionCSVRecords, MGRSRecords
    from farslip.data.shards import shard_records
    from farslip.engine.images import read_label_array
    from farslip.eval.io import read_name_lines, read_synonym_file
    from farslip.eval.ovss import OVSSDataset
    from farslip.eval.retrieval import read_pairs
    from farslip.eval.zeroshot import read_classification_csv

    mg = MGRSRecords(out / "mgrs" / "text_info.json")
    recs = [mg[i] for i in range(len(mg))]
    assert all(not r.notes for r in recs) and sum(len(r.objects) for r in recs) == s["objects"]
    assert all(Path(r.path).is_file() for r in recs)
    cap = CaptionCSVRecords(out / "captions.csv")
    assert len(cap) == 40 and Path(cap[0].path).is_file()
    shard = [r for p in s["paths"]["rs5m"] for r in shard_records(str(out / p))]
    assert len(shard) == 40 and all(getattr(r, "image_bytes", None) for r in shard)
    names = read_name_lines(out / "cls" / "classnames.txt")
    assert len(read_classification_csv(out / "cls" / "test.csv", names, None)) == 16
    pairs, _ = read_pairs(out / "retrieval" / "test.csv", None)
    assert len(pairs) == 32 and all(Path(p).is_file() for p, _ in pairs)
    assert read_synonym_file(out / "ovss" / "classes.txt")[6] == ["building", "roof", "house"]
    ds = OVSSDataset(str(out / "ovss/img_dir/val"), str(out / "ovss/ann_dir/val"), str(out / "ovss/classes.txt"))
    pairs = ds.pairs()
    assert len(pairs) == 16
    assert read_label_array(pairs[0][1]).shape == (224, 224)


def test_objects_painted_in_label_map():
    for i, scene in enumerate(SCENES):
        rgb, lab, objs = render_scene(scene, 224, np.random.default_rng(100 + i))
        assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8 and lab.shape == (224, 224)
        for o in objs:
            x1, y1, x2, y2 = o["box"]
            assert (lab[y1:y2, x1:x2] == OBJECT_LABEL[o["category"]]).mean() > 0.2, (scene, o)


def _features(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32) / 255
    gx = np.abs(np.diff(f, axis=1)).mean()
    gy = np.abs(np.diff(f, axis=0)).mean()
    return np.concatenate([f.mean((0, 1)), f.std((0, 1)), [gx + gy]])


def test_scene_classes_are_visually_distinct():
    """A nearest-centroid classifier on 7 colour/texture numbers beats chance (1/8) by far on held-out scenes:
    the scene classes differ in what an image encoder sees, not only in their captions."""
    rng = np.random.default_rng(0)
    train = {s: [_features(render_scene(s, 96, rng)[0]) for _ in range(6)] for s in SCENES}
    cent = {s: np.mean(v, 0) for s, v in train.items()}
    scale = np.std(np.concatenate(list(train.values())), 0) + 1e-6
    correct = total = 0
    for s in SCENES:
        for _ in range(5):
            f = _features(render_scene(s, 96, rng)[0])
            pred = min(cent, key=lambda c: np.sum(((f - cent[c]) / scale) ** 2))
            correct += pred == s
            total += 1
    assert correct / total >= 0.6, f"{correct}/{total}"


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["data", "synth", "--out", str(out), "--n", "8", "--n-test", "8", "--seed", "2", "--no-progress"]) == 0
    assert "8 training images" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(out), "--n", "8", "--no-progress"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--n", "8", "--n-test", "8", "--overwrite",
                 "--no-progress"]) == 0


def test_mixed_world_composes_two_scenes(tmp_path):
    """``mixed``: that share of training and OVSS images holds two scene classes on either side of a boundary; the
    caption names both; classification, retrieval and region crops stay single-scene; ``mixed=0`` writes the same
    bytes as a world without the option."""
    from farslip.dataprep.synth import land_cover_fractions

    plain = synth_world(tmp_path / "plain", n=16, seed=5, n_test=16, progress=False)
    zero = synth_world(tmp_path / "zero", n=16, seed=5, n_test=16, progress=False, mixed=0.0)
    assert _tree(tmp_path / "plain") == _tree(tmp_path / "zero") and plain["train_mixed"] == 0 == zero["ovss_mixed"]

    s = synth_world(tmp_path / "mixed", n=16, seed=5, n_test=16, progress=False, mixed=1.0)
    assert s["train_mixed"] == 16 and s["ovss_mixed"] == 16
    recs = json.loads((tmp_path / "mixed" / "mgrs" / "text_info.json").read_text())
    for r in recs:  # "a harbor and a forest": both scene words, never the same scene twice
        named = [sc for sc in SCENES if sc in r["global_caption"]]
        assert len(named) >= 2, r["global_caption"]
    a, m = _tree(tmp_path / "plain"), _tree(tmp_path / "mixed")
    for part in ("cls/", "retrieval/", "regions/"):  # the single-scene sets are the plain world's
        assert {k: v for k, v in a.items() if k.startswith(part)} == {k: v for k, v in m.items() if k.startswith(part)}
    changed = [k for k in a if k.startswith("ovss/ann_dir/") and a[k] != m[k]]
    assert len(changed) == 16  # every OVSS image is a composite ...
    for k in changed:  # ... whose label map keeps both halves' land covers where the plain image had one scene
        lab = np.asarray(Image.open(io.BytesIO(m[k])))
        assert lab.shape == (224, 224) and len(np.unique(lab)) >= 2
    assert all(0 <= f <= 1 for f in land_cover_fractions(lab).values())
    with pytest.raises(ValueError, match="mixed"):
        synth_world(tmp_path / "bad", n=4, progress=False, mixed=1.5)


def test_render_pair_keeps_objects_on_their_side():
    from farslip.dataprep.synth.scenes import render_pair

    rng = np.random.default_rng(0)
    a, b = render_scene("harbor", 128, rng), render_scene("industrial area", 128, rng)
    rgb, lab, objs = render_pair(a, b, np.random.default_rng(1))
    assert rgb.shape == (128, 128, 3) and lab.shape == (128, 128)
    from_a = (rgb == a[0]).all(-1)
    assert 0.2 < from_a.mean() < 0.8  # the boundary runs through the middle third
    for o in objs:
        x1, y1, x2, y2 = (int(round(c)) for c in o["box"])
        side = from_a[y1:y2, x1:x2] if o in a[2] else ~from_a[y1:y2, x1:x2]
        assert side.mean() >= 0.85, o  # (pixels equal in both images count as side a)
    assert set(map(id, objs)) <= set(map(id, a[2] + b[2]))
