"""The three protocols through the Python API on a tiny model and the tiny benchmark copies, against the
official scripts' logic written out here; bad inputs."""
from __future__ import annotations

import csv
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import farslip.eval as fe
from farslip.eval.registry import CLASSIFICATION, OVSS, RETRIEVAL

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


@pytest.fixture
def model_parts(tiny_model):
    model, preprocess, tokenizer = tiny_model
    model.eval()
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------------------------------------------
# Classification

def _official_classification(model, tokenizer, preprocess, csv_path, classnames_path, root):
    """SkyScript's CsvDatasetForClassification + zero_shot_classifier + run(), without pandas."""
    classnames = [line.strip() for line in Path(classnames_path).read_text().splitlines()]
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != ""]
    labels = [r["label"] for r in rows]
    try:
        idx = [int(x) for x in labels]
    except ValueError:
        idx = [classnames.index(x) for x in labels]
    templates = [lambda c: f"a satellite photo of {c}.", lambda c: f"a satellite image of {c}"]
    with torch.no_grad():
        weights = []
        for c in classnames:
            emb = model.encode_text(tokenizer([t(c) for t in templates]))
            e = F.normalize(emb, dim=-1).mean(dim=0)
            e /= e.norm()
            weights.append(e)
        classifier = torch.stack(weights, dim=1)
        images = torch.stack([preprocess(Image.open(Path(root) / r["filepath"])) for r in rows])
        feats = F.normalize(model.encode_image(images), dim=-1)
        logits = 100.0 * feats @ classifier
        pred = logits.topk(min(5, len(classnames)), 1, True, True)[1].t()
        correct = pred.eq(torch.tensor(idx).view(1, -1).expand_as(pred))
    n = len(rows)
    return {"top1": round(100 * float(correct[:1].sum()) / n, 2), "top5": round(100 * float(correct[:5].sum()) / n, 2)}


@pytest.mark.parametrize("name", ["AID", "EuroSAT"])  # names as labels; indices as labels
def test_classification_equals_official(bench_root, model_parts, name):
    model, preprocess, tokenizer = model_parts
    p = CLASSIFICATION[name].paths(bench_root)
    res = fe.zero_shot_classification(model, tokenizer, preprocess, p["csv"], p["classnames"], p["image_root"],
                                      num_workers=0, show_progress=False)
    assert res == _official_classification(model, tokenizer, preprocess, p["csv"], p["classnames"], p["image_root"])
    assert set(res) == {"top1", "top5"} and res.info["n"] == 6
    per_class = res.info["per_class_top1"]  # per class: top-1 hits of n, the same tie rule as top1
    assert sum(c["n"] for c in per_class.values()) == 6
    assert sum(c["correct"] for c in per_class.values()) == res.info["correct_top1"]


def test_classification_bad_inputs(bench_root, model_parts, tmp_path):
    model, preprocess, tokenizer = model_parts
    src = bench_root / "classification"
    root = tmp_path / "cls"
    shutil.copytree(src / "aid", root / "aid")
    csv_path, names = root / "aid" / "aid_img_txt_pairs_test.csv", root / "aid" / "classnames.txt"
    first = next(iter(csv.DictReader(csv_path.read_text().splitlines())))["filepath"]
    (root / first).write_bytes(b"not an image")
    with pytest.raises(fe.EvalDataError, match=r"aid_img_txt_pairs_test\.csv \(line 2\) field 'filepath': cannot read image"):
        fe.zero_shot_classification(model, tokenizer, preprocess, csv_path, names, root, num_workers=0,
                                    show_progress=False)
    res = fe.zero_shot_classification(model, tokenizer, preprocess, csv_path, names, root, num_workers=0,
                                      show_progress=False, on_error="skip")
    assert res.info["n"] == 5 and res.info["skipped"] == 1 and "aid" in res.info["errors"][0]["path"]

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.jpg,beach\n")
    with pytest.raises(fe.EvalDataError, match=r"missing column\(s\) 'filepath'; columns found: 'path', 'label'"):
        fe.zero_shot_classification(model, tokenizer, preprocess, bad, names, root, show_progress=False)
    bad.write_text("filepath,label\naid/x.jpg,volcano\n")
    with pytest.raises(fe.EvalDataError, match=r"bad\.csv \(line 2\) field 'label': 'volcano' is not in the class-name"):
        fe.zero_shot_classification(model, tokenizer, preprocess, bad, names, root, show_progress=False)


# --------------------------------------------------------------------------------------------------------------
# Retrieval

def _official_retrieval(model, tokenizer, preprocess, csv_path, root, caption_key, prefix):
    """FarSLIP's tests/test_retrieval.py run(), pandas' groupby replaced by sorted unique values."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = [(str(Path(root) / r["filepath"]), prefix + r[caption_key]) for r in rows]
    all_image_paths = sorted({p for p, _ in pairs})
    all_texts = sorted({t for _, t in pairs})
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in all_image_paths]), normalize=True)
        txt = model.encode_text(tokenizer(all_texts), normalize=True)
    text_indices = {x: i for i, x in enumerate(all_texts)}
    img_indices = {x: i for i, x in enumerate(all_image_paths)}
    img_path2text, text2img_path = {}, {}
    for p, t in pairs:
        img_path2text.setdefault(p, set()).add(text_indices[t])
        text2img_path.setdefault(t, set()).add(img_indices[p])
    res = {f"text2img_R@{k}": 0 for k in (1, 5, 10, 100)}
    res.update({f"img2text_R@{k}": 0 for k in (1, 5, 10, 100)})
    for i in range(len(all_texts)):
        ranking = torch.argsort(100 * txt[i] @ img.t(), descending=True).numpy()
        for k in (1, 5, 10, 100):
            if set(ranking[:k]) & text2img_path[all_texts[i]]:
                res[f"text2img_R@{k}"] += 1
    for k in (1, 5, 10, 100):
        res[f"text2img_R@{k}"] /= len(all_texts)
    res["text2img_mean"] = (res["text2img_R@1"] + res["text2img_R@5"] + res["text2img_R@10"]) / 3
    for i in range(len(all_image_paths)):
        ranking = torch.argsort(100 * img[i] @ txt.t(), descending=True).numpy()
        for k in (1, 5, 10, 100):
            if set(ranking[:k]) & img_path2text[all_image_paths[i]]:
                res[f"img2text_R@{k}"] += 1
    for k in (1, 5, 10, 100):
        res[f"img2text_R@{k}"] /= len(all_image_paths)
    res["img2text_mean"] = (res["img2text_R@1"] + res["img2text_R@5"] + res["img2text_R@10"]) / 3
    return res


@pytest.mark.parametrize("name", ["RSICD", "SkyScript"])
def test_retrieval_equals_official(bench_root, model_parts, name):
    model, preprocess, tokenizer = model_parts
    b = RETRIEVAL[name]
    p = b.paths(bench_root)
    res = fe.retrieval(model, tokenizer, preprocess, p["csv"], p["image_root"], caption_key=b.caption_key,
                       prefix=b.prefix, num_workers=0, show_progress=False)
    ref = _official_retrieval(model, tokenizer, preprocess, p["csv"], p["image_root"], b.caption_key, b.prefix)
    assert set(res) == set(ref)
    assert res == pytest.approx(ref, abs=1e-12)
    assert res.info["images"] == 7


def test_retrieval_skips_unreadable_images(bench_root, model_parts, tmp_path):
    model, preprocess, tokenizer = model_parts
    shutil.copytree(bench_root / "retrieval" / "RSICD", tmp_path / "RSICD")
    (tmp_path / "RSICD" / "images" / "0006.jpg").write_bytes(b"")
    csv_path = tmp_path / "RSICD" / "RSICD_img_txt_pairs_test.csv"
    with pytest.raises(fe.EvalDataError, match=r"RSICD_img_txt_pairs_test\.csv \(line \d+\) field 'filepath': cannot read image .*0006\.jpg"):
        fe.retrieval(model, tokenizer, preprocess, csv_path, tmp_path, num_workers=0, show_progress=False)
    res = fe.retrieval(model, tokenizer, preprocess, csv_path, tmp_path, num_workers=0, show_progress=False,
                       on_error="skip")
    assert res.info["images"] == 6 and res.info["skipped"] == 1
    # captions of image 6 alone lost their only image and are no longer queries (but stay in the gallery)
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    own = {r["title"] for r in rows if r["filepath"].endswith("0006.jpg")}
    own -= {r["title"] for r in rows if not r["filepath"].endswith("0006.jpg")}
    assert len(own) >= 2 and res.info["text_queries"] == res.info["texts"] - len(own)


# --------------------------------------------------------------------------------------------------------------
# OVSS

def _reference_ovss(model, tokenizer, ds, scale, crop, stride):
    """SegEarth-OV's pipeline on one dataset: text queries, slide, postprocess, mmseg IoU (histc)."""
    from support.reference_ovss import segearth_slide  # the shared SegEarth-OV loop

    from farslip.engine.images import prepare_image

    lines = Path(ds.class_file).read_text().splitlines()
    names, idx = [], []
    for i, line in enumerate(lines):
        for n in line.split(","):
            names.append(n)
            idx.append(i)
    import open_clip

    with torch.no_grad():
        qf = []
        for qw in names:
            f = model.encode_text(tokenizer([t(qw) for t in open_clip.OPENAI_IMAGENET_TEMPLATES]))
            f = f / f.norm(dim=-1, keepdim=True)
            f = f.mean(0)
            qf.append(f / f.norm())
        qf = torch.stack(qf)
    n_cls = len(lines)
    inter = torch.zeros(n_cls)
    union = torch.zeros(n_cls)
    for img_path, ann_path in ds.pairs():
        rgb = np.array(Image.open(img_path).convert("RGB"))
        gt = torch.from_numpy(np.array(Image.open(ann_path)).astype(np.int64))
        if ds.reduce_zero_label:
            gt[gt == 0] = 255
            gt = gt - 1
            gt[gt == 254] = 255
        x = prepare_image(torch.from_numpy(rgb), scale)
        with torch.no_grad():
            logits = segearth_slide(model, x, qf, crop=crop, stride=stride, cls_lambda=-0.3, attn="segearth")[None]
        logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear")[0]
        seg = (logits * 50).softmax(0)
        if n_cls != len(names):
            cls_index = F.one_hot(torch.tensor(idx)).T.view(n_cls, len(names), 1, 1)
            seg = (seg.unsqueeze(0) * cls_index).max(1)[0]
        pred = seg.argmax(0)
        pred[seg.max(0)[0] < ds.prob_threshold] = ds.background_index
        mask = gt != ds.ignore_index
        p, l = pred[mask], gt[mask]
        i_ = p[p == l]
        hi = torch.histc(i_.float(), bins=n_cls, min=0, max=n_cls - 1)
        hp = torch.histc(p.float(), bins=n_cls, min=0, max=n_cls - 1)
        hl = torch.histc(l.float(), bins=n_cls, min=0, max=n_cls - 1)
        inter += hi
        union += hp + hl - hi
    iou = inter / union
    return round(float(np.nanmean(iou.numpy())) * 100, 2)


@pytest.mark.parametrize("name", ["LoveDA", "iSAID"])  # reduce_zero_label + synonyms; palette labels + suffix
def test_ovss_equals_reference_pipeline(bench_root, model_parts, name):
    model, _, tokenizer = model_parts
    ds = OVSS[name].dataset(bench_root)
    res = fe.ovss(model, tokenizer, ds, protocol="segearth", scale=48, crop=32, stride=16, num_workers=0,
                  show_progress=False, batch_size=2, window_batch_size=5)
    assert res["mIoU"] == _reference_ovss(model, tokenizer, ds, 48, 32, 16)
    assert set(res) == {"mIoU", "aAcc", "mAcc", "IoU", "Acc"} and len(res["IoU"]) == len(ds.classes())
    assert res.info["images"] == 2


def test_ovss_default_protocol_and_overlays(bench_root, model_parts, tmp_path):
    """448 resize, 224/112 windows on the 32-px tiny model (positional embedding interpolated)."""
    model, _, tokenizer = model_parts
    ds = OVSS["UDD5"].dataset(bench_root)
    res = fe.ovss(model, tokenizer, ds, protocol="segearth", num_workers=0, show_progress=False, overlays=1,
                  overlay_dir=tmp_path)
    assert res.info["images"] == 2 and res["mIoU"] is not None
    assert [Path(p).name for p in res.info["overlays"]] == ["udd5_00.png"]
    with Image.open(res.info["overlays"][0]) as im:
        assert im.width > 3 * 96


def test_ovss_bad_inputs(bench_root, model_parts, tmp_path):
    model, _, tokenizer = model_parts
    root = tmp_path / "vdd"
    shutil.copytree(bench_root / "ovss" / "VDD", root)
    (root / "test" / "gt" / "vdd_00.png").unlink()
    ds = fe.OVSSDataset(str(root / "test" / "src"), str(root / "test" / "gt"), fe.registry.class_file("vdd"),
                        name="vdd", img_suffix=".JPG")
    kw = dict(scale=32, crop=32, stride=16, num_workers=0, show_progress=False)
    with pytest.raises(fe.EvalDataError, match=r"vdd_00\.png: .*no label map for image .*vdd_00\.JPG"):
        fe.ovss(model, tokenizer, ds, **kw)
    res = fe.ovss(model, tokenizer, ds, on_error="skip", **kw)
    assert res.info["images"] == 1 and res.info["skipped"] == 1
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "test" / "gt" / "vdd_00.png")
    with pytest.raises(fe.EvalDataError, match=r"vdd_00\.png: .*label map is \(5, 5\) but image .* is \(64, 96\)"):
        fe.ovss(model, tokenizer, ds, **kw)
    missing = fe.OVSSDataset(str(tmp_path / "nope" / "img"), str(root / "test" / "gt"), ["a", "b"], name="x")
    with pytest.raises(fe.EvalDataError, match=r"OVSS dataset 'x': missing image folder .*nope"):
        fe.ovss(model, tokenizer, missing, **kw)


def test_text_embeddings_are_computed_once_per_name(model_parts, monkeypatch):
    monkeypatch.setenv("FARSLIP_NO_CACHE", "1")  # the in-memory cache alone (the disk's may hold a name already)
    model, _, tokenizer = model_parts
    seen = []

    def counting_tokenizer(texts):
        seen.extend(texts)
        return tokenizer(texts)

    cache = fe.TextEmbeddingCache()
    a = fe.name_embeddings(model, counting_tokenizer, ["road", "tree"], fe.SCENE_TEMPLATES, cache=cache)
    b = fe.name_embeddings(model, counting_tokenizer, ["tree", "water", "road"], fe.SCENE_TEMPLATES, cache=cache)
    assert len(seen) == 3 * len(fe.SCENE_TEMPLATES)          # road, tree, then only water
    torch.testing.assert_close(b[[2, 0]], a)
    ref = fe.name_embeddings(model, tokenizer, ["tree", "water", "road"], fe.SCENE_TEMPLATES)
    torch.testing.assert_close(b, ref)
    # = mean of the normalised prompt embeddings, renormalised
    with torch.no_grad():
        e = F.normalize(model.encode_text(tokenizer([t.replace("{c}", "water") for t in fe.SCENE_TEMPLATES])), dim=-1)
    torch.testing.assert_close(b[1], F.normalize(e.mean(0), dim=-1))
