"""``farslip eval ovss --protocol segearth-ov3``: SegEarth-OV3's per-dataset configs, its loop (held against the
transcription in tests/support/reference_segearth_ov3.py), the SAM 3 weights as --checkpoint, what results.json
records, and the options a SAM 3 protocol refuses."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from farslip.cli import main
from farslip.eval import EvalOptions, OVSSData, evaluate
from farslip.eval.metrics import SegmentationMeter, reduce_zero_label
from farslip.eval.registry import OVSS
from farslip.models.sam3 import load_sam3, sam3_tokenizer
from support.reference_segearth_ov3 import Segmentor
from support.sam3 import one_thread  # noqa: F401 (fixture)
from support.sam3 import write_official_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

MAKE = Path(__file__).resolve().parents[1] / "data" / "eval_benchmarks" / "make.py"
QUIET = dict(workers=0, progress=False, overlays=0)

#: SegEarth-OV3's configs/cfg_*.py, typed here from the files (not read from farslip's table)
CONFIGS = {"LoveDA": dict(confidence_threshold=0.5, prob_thd=0.5, bg_idx=0, classes="ov3_loveda"),
           "Potsdam": dict(confidence_threshold=0.2, prob_thd=0.1, bg_idx=5, classes="ov3_potsdam"),
           "OpenEarthMap": dict(confidence_threshold=0.1, prob_thd=0.1, bg_idx=0, classes="openearthmap",
                                slide_crop=512, slide_stride=512)}


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam3_bench")
    runpy.run_path(str(MAKE))["make"](root)
    return root


@pytest.fixture(scope="module")
def sam3_ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("sam3_ckpt"))


def _reference_miou(model, bench_root, name, **overrides) -> dict:
    from farslip.engine.class_files import resolve_class_file

    cfg = {**CONFIGS[name], **overrides}
    ds = OVSS[name].dataset(bench_root)
    lines = resolve_class_file(cfg["classes"]).read_text().splitlines()
    lines = [ln for ln in lines if ln.strip()]
    seg = Segmentor(model, sam3_tokenizer(), lines, resolution=112, prob_thd=cfg["prob_thd"], bg_idx=cfg["bg_idx"],
                    slide_stride=cfg.get("slide_stride", 0), slide_crop=cfg.get("slide_crop", 0),
                    confidence_threshold=cfg["confidence_threshold"])
    meter = SegmentationMeter(len(lines), [ln.split(",")[0] for ln in lines], ds.ignore_index)
    from farslip.engine.images import read_label_array

    for img, ann in ds.pairs():
        _, pred = seg.predict(img)
        label = torch.from_numpy(read_label_array(ann).astype("int32"))
        if ds.reduce_zero_label:
            label = reduce_zero_label(label, ds.ignore_index)
        meter.update(pred, label)
    return meter.compute()


def test_registered_datasets_run_segearth_ov3_configs(bench_root, sam3_ckpt, tmp_path):
    run = evaluate("ovss", sam3_ckpt, data_root=bench_root, datasets=["loveda", "potsdam", "openearthmap"],
                   output=tmp_path, device="cpu", options=EvalOptions(protocol="segearth-ov3", **QUIET),
                   log=lambda _: None)
    assert run.status == 0
    model, _ = load_sam3(sam3_ckpt)
    section = run.report["sections"]["ovss"]
    for name in ("LoveDA", "Potsdam", "OpenEarthMap"):
        want = _reference_miou(model, bench_root, name)
        got = section["results"][name]
        assert got["mIoU"] == pytest.approx(want["mIoU"], abs=0.02), name
        assert got["IoU"] == want["IoU"], name
        applied = section["info"][name]["protocol"]
        cfg = CONFIGS[name]
        assert (applied["confidence"], applied["threshold"], applied["background_index"]) == \
            (cfg["confidence_threshold"], cfg["prob_thd"], cfg["bg_idx"])
        assert applied["class_file"] == cfg["classes"] and applied["arithmetic"] == "fp32"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["ovss"]["name"] == "segearth-ov3" and saved["meta"]["sam3"]["form"] == "official"
    assert saved["meta"]["checkpoint"] == str(sam3_ckpt) and saved["meta"]["clip_checkpoint"] is None


def test_own_data_slides_the_windows_given(bench_root, sam3_ckpt, tmp_path):
    """A user's dataset: the windows, confidence and threshold given; the transcription with the same values."""
    from farslip.engine.class_files import resolve_class_file

    own = OVSSData(bench_root / "ovss/LoveDA/img_dir/val", bench_root / "ovss/LoveDA/ann_dir/val", "ov3_loveda",
                   reduce_zero_label=True, name="mine")
    overrides = {"crop": 48, "stride": 32, "confidence": 0.3, "threshold": 0.2, "background_index": 1}
    run = evaluate("ovss", sam3_ckpt, own=own, output=tmp_path, device="cpu",
                   options=EvalOptions(protocol="segearth-ov3", protocol_overrides=overrides, **QUIET),
                   log=lambda _: None)
    model, _ = load_sam3(sam3_ckpt)
    want = _reference_miou(model, bench_root, "LoveDA", confidence_threshold=0.3, prob_thd=0.2, bg_idx=1,
                           slide_crop=48, slide_stride=32)
    assert run.report["sections"]["ovss"]["results"]["mine"]["IoU"] == want["IoU"]
    assert resolve_class_file("ov3_loveda").is_file()


def test_the_command_writes_the_same_numbers(bench_root, sam3_ckpt, tmp_path, capsys):
    assert main(["eval", "ovss", "--protocol", "segearth-ov3", "--checkpoint", str(sam3_ckpt), "--data-root",
                 str(bench_root), "--datasets", "vdd", "--workers", "0", "--no-progress", "--overlays", "1",
                 "--device", "cpu", "--output", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "segearth-ov3" in out
    run = evaluate("ovss", sam3_ckpt, data_root=bench_root, datasets=["vdd"], output=tmp_path / "api", device="cpu",
                   options=EvalOptions(protocol="segearth-ov3", workers=0, progress=False, overlays=1),
                   log=lambda _: None)
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert cli["sections"]["ovss"]["results"] == json.loads(json.dumps(run.report["sections"]["ovss"]["results"]))
    assert len(list((tmp_path / "cli" / "overlays" / "VDD").glob("*.png"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--protocol", "segearth-ov3", "--attn", "sclip"], "CLIP-only"),
    (["--protocol", "sam3-clip-fuse"], "--clip-checkpoint"),
    (["--protocol", "segearth-ov3", "--clip-checkpoint", "x.pt"], "runs SAM 3 alone"),
    (["--protocol", "farslip", "--clip-checkpoint", "x.pt"], "for the SAM 3 protocols"),
])
def test_refused_before_anything_loads(bench_root, sam3_ckpt, tmp_path, capsys, args, message):
    code = main(["eval", "ovss", "--checkpoint", str(sam3_ckpt), "--data-root", str(bench_root), "--workers", "0",
                 "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_eval_all_with_sam3_needs_the_clip_for_the_other_suites(bench_root, sam3_ckpt, tmp_path, capsys):
    code = main(["eval", "all", "--protocol", "segearth-ov3", "--checkpoint", str(sam3_ckpt), "--data-root",
                 str(bench_root), "--output", str(tmp_path / "out")])
    assert code == 2 and "classification and retrieval run a CLIP" in capsys.readouterr().err


@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    import farslip

    torch.manual_seed(0)
    model, *_ = farslip.load_model("FarSLIP-Tiny")
    return farslip.save_model(model, tmp_path_factory.mktemp("clip") / "clip.pt")


def test_compare_runs_each_protocol_on_the_same_images(bench_root, sam3_ckpt, clip_ckpt, tmp_path, capsys):
    from farslip.eval import compare

    cmp = compare(["farslip", "segearth-ov3", "sam3-clip-fuse"], "loveda", data_root=bench_root,
                  clip_checkpoint=clip_ckpt, sam3_checkpoint=sam3_ckpt, device="cpu", output=tmp_path,
                  options=EvalOptions(**QUIET), log=lambda _: None)
    alone = evaluate("ovss", sam3_ckpt, data_root=bench_root, datasets=["loveda"], output=tmp_path / "alone",
                     device="cpu", options=EvalOptions(protocol="segearth-ov3", **QUIET), log=lambda _: None)
    assert cmp.results["segearth-ov3"] == json.loads(json.dumps(alone.report["sections"]["ovss"]["results"]["LoveDA"]))
    header, rows = cmp.rows()
    assert header == ["class", "farslip", "segearth-ov3", "sam3-clip-fuse"]
    assert rows[1][0] == "building"  # LoveDA's second class, its first name in both class files
    assert [r[0] for r in rows[-3:]] == ["mIoU", "aAcc", "mAcc"] and len(rows) == 7 + 3
    assert (tmp_path / "compare.md").is_file() and (tmp_path / "segearth-ov3" / "results.json").is_file()
    assert main(["eval", "compare", "--protocols", "segearth", "segearth-ov3", "--dataset", "loveda", "--data-root",
                 str(bench_root), "--clip-checkpoint", str(clip_ckpt), "--sam3-checkpoint", str(sam3_ckpt),
                 "--workers", "0", "--no-progress", "--device", "cpu", "--output", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "segearth-ov3" in out and "protocol segearth," in out


def test_compare_needs_the_weights_of_its_protocols(bench_root, sam3_ckpt, tmp_path, capsys):
    assert main(["eval", "compare", "--protocols", "farslip", "segearth-ov3", "--dataset", "loveda", "--data-root",
                 str(bench_root), "--sam3-checkpoint", str(sam3_ckpt)]) == 2
    assert "farslip run(s) a CLIP: give --clip-checkpoint" in capsys.readouterr().err


def test_eval_all_runs_the_clip_suites_and_sam3_ovss(bench_root, sam3_ckpt, clip_ckpt, tmp_path):
    run = evaluate("all", sam3_ckpt, clip_checkpoint=clip_ckpt, data_root=bench_root,
                   datasets=["aid", "rsicd", "udd5"], output=tmp_path, device="cpu",
                   options=EvalOptions(protocol="segearth-ov3", **QUIET), log=lambda _: None)
    assert run.status == 0 and set(run.report["sections"]) == {"classification", "retrieval", "ovss"}
    meta = run.report["meta"]
    assert meta["clip_checkpoint"] == str(clip_ckpt) and meta["checkpoint"] == str(sam3_ckpt)
    assert meta["ovss"]["name"] == "segearth-ov3"
    assert run.report["sections"]["ovss"]["info"]["UDD5"]["protocol"]["background_index"] == 4
