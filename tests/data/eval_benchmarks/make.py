"""Write a tiny copy of every registered evaluation benchmark, in its real layout, under a data root.

    python tests/data/eval_benchmarks/make.py OUT_DIR

* classification/: the 8 SkyScript scene sets (``*_img_txt_pairs_*.csv`` + ``classnames.txt``, paths relative to
  classification/); labels are class names, except EuroSAT whose labels are class indices;
* retrieval/ and skyscript/: RSICD, RSITMD, UCM-captions (several captions per image, identical captions on
  different images) and the SkyScript 30K table (``title_multi_objects``);
* ovss/: SegEarth-OV's data/ layout for the 8 OVSS sets with their suffixes (OpenEarthMap .tif, iSAID's
  ``_instance_color_RGB.png`` palette labels, UDD5/VDD ``.JPG`` images), label values as the converters write
  them (LoveDA/Potsdam/Vaihingen 1-based with 0 = no data; 255 ignore elsewhere).

Images are small (64-96 px) blocks of colour whose labels match the blocks.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCENE_SETS = {  # folder, csv name, classes
    "SkyScript_cls": ("SkyScript_cls", "img_txt_pairs_val.csv", ["airport", "beach", "farmland", "forest"]),
    "AID": ("aid", "aid_img_txt_pairs_test.csv", ["airport", "bare land", "baseball field", "beach", "bridge"]),
    "EuroSAT": ("eurosat", "eurosat_img_txt_pairs_test.csv", ["annual crop", "forest", "highway", "river"]),
    "fMoW": ("fmow", "fmow_img_txt_pairs_val.csv", ["airport", "dam", "port", "stadium", "zoo", "park"]),
    "MillionAID": ("millionaid", "img_txt_pairs_train.csv", ["apron", "bridge", "church", "desert"]),
    "PatternNet": ("patternnet", "img_txt_pairs_train.csv", ["airplane", "beach", "bridge", "chaparral"]),
    "RSI-CB256": ("rsicb256", "img_txt_pairs_train.csv", ["airport runway", "bridge", "city building", "dam"]),
    "NWPU-RESISC45": ("nwpu", "img_txt_pairs_train.csv", ["airplane", "airport", "baseball diamond", "basketball court"]),
}

RETRIEVAL_SETS = {
    "RSICD": ("retrieval", "RSICD", "RSICD_img_txt_pairs_test.csv", "title"),
    "RSITMD": ("retrieval", "RSITMD", "RSITMD_img_txt_pairs_test.csv", "title"),
    "UCM-captions": ("retrieval", "ucmcaptions", "ucmcaptions_img_txt_pairs_test.csv", "title"),
    "SkyScript": ("skyscript", "", "SkyScript_test_30K_filtered_by_CLIP_openai.csv", "title_multi_objects"),
}

# name: (img_dir, ann_dir, img suffix, ann suffix, number of classes, label offset (1 = 1-based with 0 no-data))
OVSS_SETS = {
    "OpenEarthMap": ("OpenEarthMap/img_dir/val", "OpenEarthMap/ann_dir/val", ".tif", ".tif", 9, 0),
    "LoveDA": ("LoveDA/img_dir/val", "LoveDA/ann_dir/val", ".png", ".png", 7, 1),
    "iSAID": ("iSAID/img_dir/val", "iSAID/ann_dir/val", ".png", "_instance_color_RGB.png", 16, 0),
    "Potsdam": ("potsdam/img_dir/val", "potsdam/ann_dir/val", ".png", ".png", 6, 1),
    "Vaihingen": ("vaihingen/img_dir/val", "vaihingen/ann_dir/val", ".png", ".png", 6, 1),
    "UAVid": ("UAVid/img_dir/test", "UAVid/ann_dir/test", ".png", ".png", 7, 0),
    "UDD5": ("UDD/UDD/UDD5/val/src", "UDD/UDD/UDD5/val/gt", ".JPG", ".png", 5, 0),
    "VDD": ("VDD/test/src", "VDD/test/gt", ".JPG", ".png", 7, 0),
}


def _blocks(rng, h: int, w: int, n_classes: int, n_blocks: int = 3):
    """An image of coloured vertical bands and the class of each band."""
    classes = rng.choice(n_classes, size=n_blocks, replace=n_classes < n_blocks)
    edges = np.linspace(0, w, n_blocks + 1).astype(int)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    lab = np.zeros((h, w), dtype=np.int64)
    for c, x0, x1 in zip(classes, edges[:-1], edges[1:]):
        colour = rng.integers(0, 256, 3)
        img[:, x0:x1] = colour
        lab[:, x0:x1] = c
    img = np.clip(img.astype(int) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    return img, lab


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_classification(root: Path, rng) -> None:
    base = root / "classification"
    for name, (folder, csv_name, classes) in SCENE_SETS.items():
        d = base / folder
        (d / "images").mkdir(parents=True, exist_ok=True)
        (d / "classnames.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        rows = []
        for i in range(6):
            c = int(rng.integers(len(classes)))
            arr = rng.integers(0, 256, (40 + 8 * (i % 3), 48, 3), dtype=np.uint8)
            rel = f"{folder}/images/{classes[c].replace(' ', '_')}_{i}.jpg"
            Image.fromarray(arr).save(base / rel, quality=90)
            rows.append([rel, c if name == "EuroSAT" else classes[c]])
        rows.append(["", ""])  # a row without label: dropped, as the official reader drops it
        _write_csv(d / csv_name, ["filepath", "label"], rows)


def make_retrieval(root: Path, rng) -> None:
    words = ["green", "river", "dense", "houses", "airport", "beach", "road", "bridge", "farmland", "trees"]
    for name, (top, folder, csv_name, key) in RETRIEVAL_SETS.items():
        base = root / top
        img_dir = base / (folder or "images2") / ("images" if folder else "")
        img_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(7):
            arr = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            rel = str((img_dir / f"{i:04d}.jpg").relative_to(base))
            Image.fromarray(arr).save(base / rel, quality=90)
            n_caps = 5 if folder else 1
            for j in range(n_caps):
                cap = " ".join(rng.choice(words, 4))
                if j == 1:
                    cap = f"caption {i} repeated"  # and again below: identical captions of one image
                if j == 2:
                    cap = f"caption {i} repeated"
                if j == 3 and i < 3:
                    cap = "a shared caption"  # one caption of several images
                rows.append([rel, cap] if key == "title" else [rel, f"t {i}", cap])
        header = ["filepath", "title"] if key == "title" else ["filepath", "title", "title_multi_objects"]
        _write_csv(base / folder / csv_name if folder else base / csv_name, header, rows)


def _isaid_palette() -> list[int]:
    pal = [(0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255), (0, 127, 63),
           (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127), (0, 127, 191), (0, 127, 255),
           (0, 100, 155)]
    flat = [v for c in pal for v in c]
    return flat + [0] * (768 - len(flat))


def make_ovss(root: Path, rng, n_images: int = 2) -> None:
    base = root / "ovss"
    for name, (img_dir, ann_dir, isuf, asuf, n_cls, offset) in OVSS_SETS.items():
        (base / img_dir).mkdir(parents=True, exist_ok=True)
        (base / ann_dir).mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            h, w = (64, 96) if i % 2 == 0 else (80, 64)
            img, lab = _blocks(rng, h, w, n_cls)
            lab = lab + offset
            if offset:
                lab[:4, :] = 0  # no-data rows (ignored after reduce_zero_label)
            else:
                lab[:3, :5] = 255  # ignored pixels
            stem = f"{name.lower()}_{i:02d}"
            pil = Image.fromarray(img)
            if isuf == ".JPG":
                pil.save(base / img_dir / f"{stem}{isuf}", format="JPEG", quality=95)
            elif isuf == ".tif":
                pil.save(base / img_dir / f"{stem}{isuf}", format="TIFF")
            else:
                pil.save(base / img_dir / f"{stem}{isuf}")
            lab_img = Image.fromarray(lab.astype(np.uint8), mode="L")
            if name == "iSAID":
                lab_img = lab_img.convert("P")
                lab_img.putpalette(_isaid_palette())
            if asuf.endswith(".tif"):
                lab_img.save(base / ann_dir / f"{stem}{asuf}", format="TIFF")
            else:
                lab_img.save(base / ann_dir / f"{stem}{asuf}")


def make(out: str | Path, seed: int = 0) -> Path:
    out = Path(out)
    rng = np.random.default_rng(seed)
    make_classification(out, rng)
    make_retrieval(out, rng)
    make_ovss(out, rng)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(make(sys.argv[1]))
