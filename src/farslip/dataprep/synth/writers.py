"""The world on disk: one writer per format the project reads (MGRS JSON, RS5M shards, CSVs, OVSS maps)."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..captions import TemplateCaptioner, join_words
from ..mgrs import mgrs_record, write_mgrs_json
from ..names import assign_category_ids
from .labels import OBJECT_CATEGORIES, OVSS_CLASSES, SCENES
from .scenes import land_cover_fractions, render_pair, render_scene

# ------------------------------------------------------------------------------------------------ world

class _Tar:
    """Deterministic webdataset shards (fixed mtime, owner and mode)."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.n, self.tar, self.paths = 0, None, []

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        if self.tar is None or self.n % self.shard_size == 0:
            self.close()
            path = self.folder / f"shard-{len(self.paths):06d}.tar"
            self.paths.append(path)
            self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        for ext, data in fields.items():
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(data), 0, 0o644, 0, 0, "", ""
            self.tar.addfile(ti, io.BytesIO(data))
        self.n += 1

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None


def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _scene_order(n: int, rng: np.random.Generator) -> list[str]:
    """Balanced scene classes in a seeded random order."""
    reps = -(-n // len(SCENES))
    order = np.tile(np.arange(len(SCENES)), reps)[:n]
    rng.shuffle(order)
    return [SCENES[i] for i in order]


def _partners(scenes: list[str], share: float, rng: np.random.Generator) -> list[str | None]:
    """For a ``share`` of the images, a second scene class (never the image's own) to compose it with."""
    out = []
    for scene in scenes:
        other = [s for s in SCENES if s != scene]
        partner = other[int(rng.integers(len(other)))]
        out.append(partner if rng.random() < share else None)
    return out


def _render(scene: str, partner: str | None, size: int, ss: np.random.SeedSequence):
    """One image of ``scene``, or -- with a ``partner`` -- the same image composed with a partner scene drawn from
    a stream of its own (so the single-scene rendering is the one a world without mixing writes)."""
    single = render_scene(scene, size, np.random.default_rng(ss))
    if partner is None:
        return single, single
    ss_b, ss_cut = ss.spawn(2)
    other = render_scene(partner, size, np.random.default_rng(ss_b))
    return single, render_pair(single, other, np.random.default_rng(ss_cut))


def _captions(captioner: TemplateCaptioner, objs: list[dict], lab: np.ndarray, scene, key: str) -> dict:
    """The template captions, with the global caption also naming the land covers that fill at least 5% of the
    image -- what is there, never where: the caption a web-scale CLIP learns from. The OVSS classes' words thereby
    occur in the training text, so a model can be asked for them at all; where they are it must work out itself."""
    size = lab.shape[0]
    fractions = land_cover_fractions(lab)
    caps = captioner(objs, size, size, scene=scene, land_cover=fractions, key=key)
    cover = [name for name, frac in sorted(fractions.items(), key=lambda kv: (-kv[1], kv[0])) if frac >= 0.05]
    cover = [name for name in cover[:3] if name not in caps["global_caption"]]  # "a forest; forest in view"
    if cover:
        caps["global_caption"] = caps["global_caption"][:-1] + f"; {join_words(cover)} in view."
    return caps


def _object_crops(rgb: np.ndarray, objs: list[dict], min_side: int, side: int = 64) -> list[tuple[str, np.ndarray]]:
    """One crop per object category present (the first object of each with a box of at least ``min_side**2``
    px), cut tight to the box and squashed to ``side`` x ``side`` as stage 2's region views are."""
    crops, seen = [], set()
    for o in objs:
        x1, y1, x2, y2 = o["box"]
        if o["category"] in seen or (x2 - x1) * (y2 - y1) < min_side ** 2:
            continue
        seen.add(o["category"])
        crop = Image.fromarray(rgb[y1:y2, x1:x2]).resize((side, side), Image.BICUBIC)
        crops.append((o["category"], np.asarray(crop)))
    return crops


def synth_world(out: str | Path, n: int = 512, seed: int = 0, size: int = 224, n_test: int | None = None,
                shard_size: int = 1000, overwrite: bool = False, progress: bool = True,
                min_region_side: int = 8, mixed: float = 0.0) -> dict:
    """Write a synthetic RS world to ``out`` (see the module doc for the layout); return the summary that is also
    written to ``out/world.json``. ``n`` training images, ``n_test`` held-out images (default: max(24, n // 4))
    for classification, retrieval, OVSS and region-category classification (one crop per object category per image,
    boxes of at least ``min_region_side**2`` px: the objects stage 2 trains on). A ``mixed`` share of the training
    images and of the OVSS images are two scenes composed (:func:`~farslip.dataprep.synth.scenes.render_pair`,
    captions naming both); classification, retrieval and region crops always use single scenes."""
    from tqdm.auto import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= mixed <= 1.0:
        raise ValueError(f"mixed must be a share between 0 and 1, got {mixed}")
    if size < 64:
        raise ValueError(f"size must be >= 64 px, got {size}")
    n_test = max(3 * len(SCENES), n // 4) if n_test is None else n_test
    out = Path(out)
    parts = ("mgrs", "rs5m", "cls", "retrieval", "regions", "ovss", "captions.csv", "world.json")
    existing = [p for p in parts if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass overwrite=True (--overwrite)")
    for p in existing:
        shutil.rmtree(out / p) if (out / p).is_dir() else (out / p).unlink()
    for d in ("mgrs/global_imgs", "rs5m", "cls/images", "retrieval/images", "regions/images", "ovss/img_dir/val",
              "ovss/ann_dir/val"):
        (out / d).mkdir(parents=True, exist_ok=True)

    cat_ids = assign_category_ids(OBJECT_CATEGORIES)
    captioner = TemplateCaptioner()
    root = np.random.SeedSequence(seed)
    train_ss, test_ss, order_ss = root.spawn(3)
    train_scenes = _scene_order(n, np.random.default_rng(order_ss))
    test_scenes = [SCENES[i % len(SCENES)] for i in range(n_test)]
    mix_train, mix_test = (np.random.default_rng(s) for s in root.spawn(2))  # after the others: mixed=0 is unchanged
    train_partners, test_partners = _partners(train_scenes, mixed, mix_train), _partners(test_scenes, mixed, mix_test)

    records, cap_rows = [], []
    shards = _Tar(out / "rs5m", shard_size)
    n_objects = 0
    try:
        for i, (scene, partner, ss) in enumerate(tqdm(list(zip(train_scenes, train_partners, train_ss.spawn(n))),
                                                      desc="synth train", unit="img", disable=not progress)):
            _, (rgb, lab, objs) = _render(scene, partner, size, ss)
            name = f"{i:06d}.jpg"
            scene_words = (scene, partner) if partner else scene
            caps = _captions(captioner, objs, lab, scene_words, name)
            data = _jpeg(rgb)
            (out / "mgrs/global_imgs" / name).write_bytes(data)
            for o in objs:
                o["category_id"] = cat_ids[o["category"]]
            records.append(mgrs_record(name, caps, objs, size, size,
                                       scene=join_words(scene_words) if partner else scene))  # relative to global_imgs/
            cap_rows.append((f"mgrs/global_imgs/{name}", caps["global_caption"]))
            shards.write(f"{i:06d}", {"img_content": data, "img_name": name.encode(),
                                      "caption": caps["global_caption"].encode("utf-8")})
            n_objects += len(objs)
    finally:
        shards.close()
    write_mgrs_json(records, out / "mgrs/text_info.json")
    _write_csv(out / "captions.csv", ("filepath", "title"), cap_rows)

    cls_rows, ret_rows, region_rows = [], [], []
    ovss_counts = np.zeros(len(OVSS_CLASSES), np.int64)
    for i, (scene, partner, ss) in enumerate(tqdm(list(zip(test_scenes, test_partners, test_ss.spawn(n_test))),
                                              desc="synth test", unit="img", disable=not progress)):
        (rgb, lab, objs), (ovss_rgb, ovss_lab, _) = _render(scene, partner, size, ss)
        stem = f"{i:06d}"
        data = _jpeg(rgb)
        (out / "cls/images" / f"{stem}.jpg").write_bytes(data)
        (out / "retrieval/images" / f"{stem}.jpg").write_bytes(data)
        (out / "ovss/img_dir/val" / f"{stem}.png").write_bytes(_png(ovss_rgb))
        (out / "ovss/ann_dir/val" / f"{stem}.png").write_bytes(_png(ovss_lab))
        ovss_counts += np.bincount(ovss_lab.ravel(), minlength=len(OVSS_CLASSES))
        caps = _captions(captioner, objs, lab, scene, f"test-{stem}")
        for k, (category, crop) in enumerate(_object_crops(rgb, objs, min_region_side)):
            (out / "regions/images" / f"{stem}-{k}.png").write_bytes(_png(crop))
            region_rows.append((f"images/{stem}-{k}.png", OBJECT_CATEGORIES.index(category)))
        cls_rows.append((f"images/{stem}.jpg", SCENES.index(scene)))
        ret_rows.append((f"images/{stem}.jpg", caps["global_caption"]))
        ret_rows.append((f"images/{stem}.jpg", caps["detailed_caption"]))
    _write_csv(out / "cls/test.csv", ("filepath", "label"), cls_rows)
    (out / "cls/classnames.txt").write_text("\n".join(SCENES) + "\n", encoding="utf-8")
    _write_csv(out / "retrieval/test.csv", ("filepath", "title"), ret_rows)
    _write_csv(out / "regions/test.csv", ("filepath", "label"), region_rows)
    (out / "regions/classnames.txt").write_text("\n".join(OBJECT_CATEGORIES) + "\n", encoding="utf-8")
    (out / "ovss/classes.txt").write_text("\n".join(",".join(c) for c in OVSS_CLASSES) + "\n", encoding="utf-8")

    summary = {
        "generator": "farslip.dataprep.synth", "version": 1, "seed": seed, "size": size,
        "train_images": n, "test_images": n_test, "objects": n_objects, "mixed": mixed,
        "train_mixed": sum(p is not None for p in train_partners),
        "ovss_mixed": sum(p is not None for p in test_partners),
        "scenes": list(SCENES),
        "train_scene_counts": {s: train_scenes.count(s) for s in SCENES},
        "test_scene_counts": {s: test_scenes.count(s) for s in SCENES},
        "test_region_counts": {c: sum(r[1] == i for r in region_rows) for i, c in enumerate(OBJECT_CATEGORIES)},
        "categories": cat_ids,
        "ovss_classes": [list(c) for c in OVSS_CLASSES],
        "ovss_background_index": 0,
        "ovss_pixel_share": {OVSS_CLASSES[c][0]: round(float(v) / max(1, ovss_counts.sum()), 4)
                             for c, v in enumerate(ovss_counts)},
        "paths": {
            "mgrs": "mgrs/text_info.json", "mgrs_images": "mgrs/global_imgs",
            "rs5m": [p.relative_to(out).as_posix() for p in shards.paths],
            "captions_csv": "captions.csv",
            "cls_csv": "cls/test.csv", "cls_classnames": "cls/classnames.txt",
            "retrieval_csv": "retrieval/test.csv",
            "regions_csv": "regions/test.csv", "regions_classnames": "regions/classnames.txt",
            "ovss_images": "ovss/img_dir/val", "ovss_labels": "ovss/ann_dir/val", "ovss_classes": "ovss/classes.txt",
        },
        "notes": "Objects are 5-90 px at 224 px; FarSLIP stage 2's default 64x64 px minimum region area drops most "
                 "of them, so lower it when training on this world.",
    }
    tmp = out / ".world.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "world.json")
    return summary


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
