"""The paper's 20 benchmarks as data: where each lives under the data root and how it is scored.

Layout under ``--data-root DIR`` (each top folder can be moved with ``roots={"ovss": "/elsewhere"}`` /
``--root ovss=/elsewhere``)::

    DIR/classification/   SkyScript's scene-classification benchmark zips, unpacked (= BENCHMARK_DATASET_ROOT_DIR)
        aid/aid_img_txt_pairs_test.csv  aid/classnames.txt  ...   (image paths in the CSVs are relative to here)
    DIR/retrieval/        SkyScript's retrieval zips RSICD.zip, RSITMD.zip, ucmcaptions.zip, unpacked
        RSICD/RSICD_img_txt_pairs_test.csv ...                    (image paths relative to here)
    DIR/skyscript/        SkyScript_test_30K_filtered_by_CLIP_openai.csv and the SkyScript image folders it names
    DIR/ovss/             SegEarth-OV's ``data/`` folder as its converters write it
        OpenEarthMap/img_dir/val  OpenEarthMap/ann_dir/val  LoveDA/...  iSAID/...  potsdam/...  vaihingen/...
        UAVid/img_dir/test  UDD/UDD/UDD5/val/{src,gt}  VDD/test/{src,gt}

See docs/benchmarks.md for where each comes from and how to prepare it.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping

from ..engine import SCENE_TEMPLATES
from .ovss import OVSSDataset
from .retrieval import SATELLITE_PREFIX

DEFAULT_ROOTS = {"classification": "classification", "retrieval": "retrieval", "skyscript": "skyscript",
                 "ovss": "ovss"}


def class_file(name: str) -> str:
    """Path of a packaged OVSS class-name file (``cls_<name>.txt``, SegEarth-OV's synonyms)."""
    return str(resources.files("farslip") / "resources" / f"cls_{name}.txt")


def _root(kind: str, data_root, roots: Mapping[str, str] | None) -> Path:
    roots = roots or {}
    if kind in roots:
        return Path(roots[kind])
    if data_root is None:
        raise ValueError(f"no data root: pass data_root or roots[{kind!r}]")
    return Path(data_root) / DEFAULT_ROOTS[kind]


@dataclass(frozen=True)
class ClassificationBenchmark:
    name: str
    folder: str                       # under the classification root
    csv: str                          # relative to the classification root
    classnames: str                   # relative to the classification root
    aliases: tuple[str, ...] = ()
    split: str = "test"
    templates: tuple[str, ...] = SCENE_TEMPLATES
    root: str = "classification"
    source: str = ""

    def paths(self, data_root=None, roots=None) -> dict:
        r = _root(self.root, data_root, roots)
        return {"csv": r / self.csv, "classnames": r / self.classnames, "image_root": r}

    def missing(self, data_root=None, roots=None) -> list[str]:
        p = self.paths(data_root, roots)
        return [f"{what} {p[what]}" for what in ("csv", "classnames") if not p[what].is_file()]


@dataclass(frozen=True)
class RetrievalBenchmark:
    name: str
    csv: str                          # relative to its root
    caption_key: str = "title"
    prefix: str = ""
    aliases: tuple[str, ...] = ()
    root: str = "retrieval"
    source: str = ""

    def paths(self, data_root=None, roots=None) -> dict:
        r = _root(self.root, data_root, roots)
        return {"csv": r / self.csv, "image_root": r}

    def missing(self, data_root=None, roots=None) -> list[str]:
        p = self.paths(data_root, roots)
        return [] if p["csv"].is_file() else [f"csv {p['csv']}"]


@dataclass(frozen=True)
class OVSSBenchmark:
    name: str
    img_dir: str                      # relative to the OVSS root
    ann_dir: str
    class_name_file: str              # packaged cls_<x>.txt
    img_suffix: str
    ann_suffix: str
    prob_threshold: float
    background_index: int = 0
    reduce_zero_label: bool = False
    ignore_index: int = 255
    aliases: tuple[str, ...] = ()
    root: str = "ovss"
    source: str = ""
    #: other ``(img_dir, ann_dir)`` spellings seen in the wild (SegEarth-OV's dataset_prepare.md tree); the
    #: first location that exists is used, the config's one is reported when none does
    alternatives: tuple[tuple[str, str], ...] = ()

    def locate(self, data_root=None, roots=None) -> tuple[Path, Path]:
        r = _root(self.root, data_root, roots)
        for img, ann in ((self.img_dir, self.ann_dir), *self.alternatives):
            if (r / img).is_dir() and (r / ann).is_dir():
                return r / img, r / ann
        return r / self.img_dir, r / self.ann_dir

    def dataset(self, data_root=None, roots=None, class_file_override: str | None = None) -> OVSSDataset:
        img_dir, ann_dir = self.locate(data_root, roots)
        return OVSSDataset(img_dir=str(img_dir), ann_dir=str(ann_dir),
                           class_file=class_file_override or class_file(self.class_name_file), name=self.name,
                           img_suffix=self.img_suffix, ann_suffix=self.ann_suffix,
                           prob_threshold=self.prob_threshold, background_index=self.background_index,
                           ignore_index=self.ignore_index, reduce_zero_label=self.reduce_zero_label)

    def missing(self, data_root=None, roots=None) -> list[str]:
        return self.dataset(data_root, roots).missing()


_SKY = "SkyScript benchmark release (github.com/wangzhecheng/SkyScript, 'Download benchmark datasets')"

CLASSIFICATION: dict[str, ClassificationBenchmark] = {b.name: b for b in [
    ClassificationBenchmark("SkyScript_cls", "SkyScript_cls", "SkyScript_cls/img_txt_pairs_val.csv",
                            "SkyScript_cls/classnames.txt", ("skyscript_cls", "skyscript-cls"), "val",
                            source=_SKY + ": SkyScript_cls.zip (70 classes, in-domain)"),
    ClassificationBenchmark("AID", "aid", "aid/aid_img_txt_pairs_test.csv", "aid/classnames.txt", ("aid",),
                            source=_SKY + ": aid.zip"),
    ClassificationBenchmark("EuroSAT", "eurosat", "eurosat/eurosat_img_txt_pairs_test.csv", "eurosat/classnames.txt",
                            ("eurosat",), source=_SKY + ": eurosat.zip"),
    ClassificationBenchmark("fMoW", "fmow", "fmow/fmow_img_txt_pairs_val.csv", "fmow/classnames.txt", ("fmow",),
                            "val", source=_SKY + ": fmow.zip"),
    ClassificationBenchmark("MillionAID", "millionaid", "millionaid/img_txt_pairs_train.csv",
                            "millionaid/classnames.txt", ("millionaid", "million-aid"), "train",
                            source=_SKY + ": millionaid.zip"),
    ClassificationBenchmark("PatternNet", "patternnet", "patternnet/img_txt_pairs_train.csv",
                            "patternnet/classnames.txt", ("patternnet",), "train", source=_SKY + ": patternnet.zip"),
    ClassificationBenchmark("RSI-CB256", "rsicb256", "rsicb256/img_txt_pairs_train.csv", "rsicb256/classnames.txt",
                            ("rsicb", "rsicb256", "rsi-cb"), "train", source=_SKY + ": rsicb256.zip"),
    ClassificationBenchmark("NWPU-RESISC45", "nwpu", "nwpu/img_txt_pairs_train.csv", "nwpu/classnames.txt",
                            ("nwpu", "resisc45", "nwpu-resisc45"), "train", source=_SKY + ": nwpu.zip"),
]}

RETRIEVAL: dict[str, RetrievalBenchmark] = {b.name: b for b in [
    RetrievalBenchmark("RSICD", "RSICD/RSICD_img_txt_pairs_test.csv", "title", SATELLITE_PREFIX, ("rsicd",),
                       source=_SKY + ": RSICD.zip"),
    RetrievalBenchmark("RSITMD", "RSITMD/RSITMD_img_txt_pairs_test.csv", "title", SATELLITE_PREFIX, ("rsitmd",),
                       source=_SKY + ": RSITMD.zip"),
    RetrievalBenchmark("UCM-captions", "ucmcaptions/ucmcaptions_img_txt_pairs_test.csv", "title", SATELLITE_PREFIX,
                       ("ucmcaptions", "ucm", "ucm-captions"), source=_SKY + ": ucmcaptions.zip"),
    RetrievalBenchmark("SkyScript", "SkyScript_test_30K_filtered_by_CLIP_openai.csv", "title_multi_objects", "",
                       ("skyscript", "skyscript-30k"), root="skyscript",
                       source="SkyScript dataset (github.com/wangzhecheng/SkyScript): dataframe/"
                              "SkyScript_test_30K_filtered_by_CLIP_openai.csv and the images2..7 zips it refers to"),
]}

_SEG = "prepared with SegEarth-OV's tools/dataset_converters (github.com/likyoo/SegEarth-OV, dataset_prepare.md)"

OVSS: dict[str, OVSSBenchmark] = {b.name: b for b in [
    OVSSBenchmark("OpenEarthMap", "OpenEarthMap/img_dir/val", "OpenEarthMap/ann_dir/val", "openearthmap",
                  ".tif", ".tif", 0.1, 0, False, aliases=("openearthmap", "oem"),
                  source="OpenEarthMap (open-earth-map.org), " + _SEG + ": openearthmap.py"),
    OVSSBenchmark("LoveDA", "LoveDA/img_dir/val", "LoveDA/ann_dir/val", "loveda", ".png", ".png", 0.3, 0, True,
                  aliases=("loveda",), alternatives=(("loveDA/img_dir/val", "loveDA/ann_dir/val"),), source="LoveDA (Zenodo, Val.zip), " + _SEG + ": loveda.py"),
    OVSSBenchmark("iSAID", "iSAID/img_dir/val", "iSAID/ann_dir/val", "isaid", ".png", "_instance_color_RGB.png",
                  0.4, 0, False, aliases=("isaid",),
                  source="iSAID (DOTA images + iSAID semantic masks, val), " + _SEG + ": isaid.py"),
    OVSSBenchmark("Potsdam", "potsdam/img_dir/val", "potsdam/ann_dir/val", "potsdam", ".png", ".png", 0.1, 5, True,
                  aliases=("potsdam",), source="ISPRS Potsdam (2_Ortho_RGB.zip, 5_Labels_all_noBoundary.zip), "
                                                + _SEG + ": potsdam.py"),
    OVSSBenchmark("Vaihingen", "vaihingen/img_dir/val", "vaihingen/ann_dir/val", "vaihingen", ".png", ".png", 0.1, 5,
                  True, aliases=("vaihingen",),
                  source="ISPRS Vaihingen (ISPRS_semantic_labeling_Vaihingen.zip, "
                         "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip), " + _SEG
                         + ": vaihingen.py"),
    OVSSBenchmark("UAVid", "UAVid/img_dir/test", "UAVid/ann_dir/test", "uavid", ".png", ".png", 0.3, 0, False,
                  aliases=("uavid",), source="UAVid (uavid.nl; the labelled test split as SegEarth-OV uses it), "
                                              + _SEG + ": uavid.py"),
    OVSSBenchmark("UDD5", "UDD/UDD/UDD5/val/src", "UDD/UDD/UDD5/val/gt", "udd5", ".JPG", ".png", 0.4, 4, False,
                  aliases=("udd5", "udd"), alternatives=(("UDD5/val/src", "UDD5/val/gt"),), source="UDD5 (github.com/MarcWong/UDD), used as released; " + _SEG),
    OVSSBenchmark("VDD", "VDD/test/src", "VDD/test/gt", "vdd", ".JPG", ".png", 0.3, 0, False, aliases=("vdd",),
                  source="VDD (github.com/RussRobin/VDD), used as released; " + _SEG),
]}

REGISTRY = {"classification": CLASSIFICATION, "retrieval": RETRIEVAL, "ovss": OVSS}


def select(kind: str, names: Iterable[str] | None = None) -> list:
    """Registered benchmarks of ``kind`` by name or alias (case-insensitive); all of them when ``names`` is None."""
    table = REGISTRY[kind]
    if not names:
        return list(table.values())
    lookup = {}
    for b in table.values():
        for key in (b.name, *b.aliases):
            lookup[key.lower()] = b
    out, unknown = [], []
    for n in names:
        b = lookup.get(n.lower())
        if b is None:
            unknown.append(n)
        elif b not in out:
            out.append(b)
    if unknown:
        raise KeyError(f"unknown {kind} benchmark(s) {', '.join(unknown)}; known: {', '.join(table)}")
    return out


def select_any(names: Iterable[str] | None) -> dict[str, list]:
    """Split a mixed list of benchmark names over the three kinds (``all`` of a kind when none named)."""
    if not names:
        return {k: select(k) for k in REGISTRY}
    out = {k: [] for k in REGISTRY}
    unknown = []
    for n in names:
        for k in REGISTRY:
            try:
                out[k] += [b for b in select(k, [n]) if b not in out[k]]
                break
            except KeyError:
                continue
        else:
            unknown.append(n)
    if unknown:
        known = ", ".join(b for t in REGISTRY.values() for b in t)
        raise KeyError(f"unknown benchmark(s) {', '.join(unknown)}; known: {known}")
    return out
