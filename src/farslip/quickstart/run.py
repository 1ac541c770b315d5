"""The quickstart's pipeline: the synthetic world, the stand-in CLIP, both FarSLIP stages beside their ablations,
the five models evaluated, the maps example, the report; and the same once per seed."""
from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

import torch

from ..core.files import atomic_write
from .analysis import PRE, S1, S1_ABL, S2, S2_ABL, seed_table
from .figures import loss_curves, retrieval_example
from .report import render_report
from .sizes import SIZES

MIXED = 0.5  # share of two-scene images (training and OVSS): where patch tokens that describe the whole image fail
REGION_TEMPLATES = ("a satellite image of {c}",)  # stage 2's region text (data.views region_template)


def _say(msg: str) -> None:
    print(f"\n[quickstart] {msg}", flush=True)


class _Timings(dict):
    """Seconds per step, in the order the steps ran: ``timed(label, fn, *args)`` runs ``fn`` and records it."""

    def __call__(self, label: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self[label] = time.perf_counter() - start
        return result


def run_quickstart(out: str | Path = "runs/quickstart", size: str = "full", seed: int = 0) -> Path:
    """The whole method on a synthetic world into ``out`` (remade): returns the path of ``report.md``."""
    threads = torch.get_num_threads()
    # A 3-layer, 96-wide ViT is too small for intra-op parallelism to pay: one thread leaves the other core to the
    # data-loader workers, and a second thread only adds synchronisation (several times slower on a busy machine).
    torch.set_num_threads(1)
    try:
        return _run_quickstart(Path(out), SIZES[size], seed)
    finally:
        torch.set_num_threads(threads)


def _run_quickstart(out: Path, spec: dict, seed: int) -> Path:
    from ..dataprep import synth_world

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timed = _Timings()
    torch.manual_seed(seed)
    world = out / "world"
    _say(f"1/6 writing a synthetic world of {spec['n']} training images ({spec['image']} px, {MIXED:.0%} of them "
         f"two scenes side by side) to {world}")
    summary = timed("synthetic world", synth_world, world, n=spec["n"], seed=seed, size=spec["image"], overwrite=True,
                    shard_size=max(1, spec["n"] // 4), mixed=MIXED)  # four even shards: two per loader worker
    models, schedules = _train_models(out, world, spec, timed)
    final = out / "farslip-tiny-stage2.pt"
    shutil.copyfile(models[S2], final)
    results = _evaluate_models(models, world, out / "overlays", spec["overlays"], timed)
    _say("maps: segment and locate on a georeferenced scene of the world with the final model (COGs, polygons, HTML)")
    maps = timed("maps", maps_example, final, world, out / "maps", tile=spec["image"], grid=spec["map_grid"],
                 seed=seed)
    _say("6/6 writing the report")
    total = time.perf_counter() - t_start
    loss_curves(out, out / "loss_curves.png")
    example = retrieval_example(models[S2], world, out / "retrieval_example.png")
    report = render_report(out, world=summary, results=results, timings=timed, total=total, final=final,
                           schedules=schedules, seed=seed, maps=maps, retrieval=example)
    atomic_write(out / "results.json", json.dumps({"results": results, "timings": timed, "total_s": total},
                                                  indent=2, default=str))
    print(f"\n[quickstart] done in {time.perf_counter() - t_start:.0f} s. Report: {report}\n"
          f"[quickstart] final model: {final}  (try: farslip segment IMAGE.tif --checkpoint {final} "
          f"--classes water forest building)")
    return report


def _recipe(name: str) -> Path:
    return Path(str(resources.files("farslip") / "resources" / f"quickstart_{name}.yaml"))


def _train(recipe: str, out: Path, overrides: dict, run: str) -> tuple[Path, dict]:
    """Train ``recipe`` into ``OUT/runs/<run>``: its final checkpoint, and its schedule as the report lists it."""
    from ..train import load_config, train

    cfg = load_config(_recipe(recipe), overrides)
    cfg.run.out = str(out / "runs" / run)
    train(cfg, overwrite=True)  # the quickstart remakes its whole folder, its runs included
    log = [json.loads(x) for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines() if x]
    o = cfg.optim
    schedule = {"lr": o.lr, "weight_decay": o.weight_decay, "warmup": o.warmup, "epochs": o.epochs,
                "batch_size": o.batch_size, "steps": max((e.get("step", 0) for e in log), default=0)}
    return Path(cfg.run.out) / "final.pt", schedule


def _train_models(out: Path, world: Path, spec: dict, timed: _Timings) -> tuple[dict, dict]:
    """Pretraining, then each stage and its ablation: ``{model name: checkpoint}`` in the report's order, and the
    schedules of pretraining and both stages (the ablations' are their stage's)."""
    e_pre, e_s1, e_s2 = spec["epochs"]
    limit = {"max_steps": spec["max_steps"]} if spec["max_steps"] else {}
    if spec["batch"]:
        limit["batch_size"] = spec["batch"]
    schedules = {}

    def stage_and_ablation(recipe, label, start, train_data, epochs, term, weight, run):
        """The stage as the paper has it, then the same run with its new loss term's weight 0."""
        over = {"model": {"pretrained": str(start)}, "data": {"train": str(train_data)},
                "optim": {"epochs": epochs, **limit}}
        model, schedules[recipe] = timed(label, _train, recipe, out, over, recipe)
        ablation, _ = timed(f"{label} without {term}", _train, recipe, out, {**over, "objective": {weight: 0.0}}, run)
        return model, ablation

    _say("2/6 pretraining a tiny CLIP on the global captions (the stand-in for OpenAI CLIP)")
    pre, schedules["pretrain"] = timed("pretrain", _train, "pretrain", out, {
        "data": {"train": str(world / "captions.csv")}, "optim": {"epochs": e_pre, **limit}}, "pretrain")
    _say("3/6 FarSLIP stage 1: global ITC + patch-to-patch distillation on the RS5M-style shards "
         "(and the same run without the distillation term)")
    s1, s1_abl = stage_and_ablation("stage1", "stage 1", pre, world / "rs5m" / "*.tar", e_s1, "distillation",
                                    "distill_weight", "stage1-no-distill")
    _say("4/6 FarSLIP stage 2: global ITC + CLS-token region-category alignment on the MGRS-format data "
         "(and the same run without the region term)")
    s2, s2_abl = stage_and_ablation("stage2", "stage 2", s1, world / "mgrs" / "text_info.json", e_s2, "region term",
                                    "region_weight", "stage2-no-region")
    return {PRE: pre, S1_ABL: s1_abl, S1: s1, S2_ABL: s2_abl, S2: s2}, schedules


def _evaluate_models(models: dict, world: Path, overlay_root: Path, overlays: int, timed: _Timings) -> dict:
    """:func:`evaluate_on_world` for each model; OVSS overlays for the first and the last model only."""
    _say("5/6 evaluating the pretrained model, both stages and their ablations")
    shutil.rmtree(overlay_root, ignore_errors=True)  # an earlier run's pictures are not this run's
    results = {}
    for i, (name, ckpt) in enumerate(models.items()):
        n_overlays = overlays if name in (PRE, S2) else 0
        print(f"[quickstart]   {name} ({i + 1}/{len(models)}): classification, retrieval, OVSS, region crops, "
              f"dense metrics", flush=True)
        results[name] = timed(f"evaluate {name}", evaluate_on_world, ckpt, world, overlay_root / f"model{i}",
                              n_overlays)
    return results


def evaluate_on_world(checkpoint: Path, world: Path, overlay_dir: Path, overlays: int) -> dict:
    """Classification, retrieval and OVSS on the world's held-out sets (OVSS scaled to the tiny model: images
    fit 2S, windows S, stride S/2 -- the 448/224/112 protocol at S = 64), plus what each FarSLIP stage targets:
    the dense probes of :func:`farslip.eval.dense.dense_metrics` (stage 1) and zero-shot region-category accuracy
    on held-out object crops (stage 2)."""
    from ..engine.images import model_input_size
    from ..eval import OVSSDataset, ovss, retrieval, zero_shot_classification
    from ..eval.dense import dense_metrics
    from ..models import load_model

    model, _, preprocess, tokenizer = load_model(checkpoint=checkpoint)
    model.eval()
    S = model_input_size(model)
    with torch.no_grad():
        cls = zero_shot_classification(model, tokenizer, preprocess, world / "cls" / "test.csv",
                                       world / "cls" / "classnames.txt", world / "cls", num_workers=0,
                                       show_progress=False)
        ret = retrieval(model, tokenizer, preprocess, world / "retrieval" / "test.csv", world / "retrieval",
                        num_workers=0, show_progress=False)
        ds = OVSSDataset(str(world / "ovss" / "img_dir" / "val"), str(world / "ovss" / "ann_dir" / "val"),
                         str(world / "ovss" / "classes.txt"), name="synthetic")
        seg = ovss(model, tokenizer, ds, scale=2 * S, crop=S, stride=S // 2, num_workers=0, overlays=overlays,
                   overlay_dir=overlay_dir, show_progress=False)
        regions = zero_shot_classification(model, tokenizer, preprocess, world / "regions" / "test.csv",
                                           world / "regions" / "classnames.txt", world / "regions",
                                           templates=REGION_TEMPLATES, num_workers=0, show_progress=False)
        dense = dense_metrics(model, tokenizer, ds)
    return {"classification": dict(cls), "classification_per_class": cls.info["per_class_top1"],
            "retrieval": dict(ret), "ovss_protocol": {"fit": 2 * S, "window": S, "stride": S // 2},
            "regions": dict(regions), "dense": dense,
            "ovss": {k: v for k, v in seg.items() if not isinstance(v, dict)}, "ovss_iou": seg.get("IoU", {}),
            "overlays": sorted(str(p) for p in Path(overlay_dir).glob("**/*.png")) if overlays else []}


def maps_example(checkpoint: Path, world: Path, out: Path, tile: int, grid: int, seed: int = 0) -> dict:
    """A georeferenced mosaic of the world's scenes, segmented into the OVSS classes (class map, confidence,
    polygons, HTML map) and searched for storage tanks and ships with ``locate``, at the evaluation's scale (the
    tiles resized to 2S as in the OVSS protocol); the class map's agreement with the scene's truth."""
    import numpy as np
    import rasterio

    from ..dataprep.synth.geoscene import write_georeferenced_scene
    from ..engine.images import model_input_size
    from ..infer import locate, segment
    from ..infer.common import load_for_inference

    scene = write_georeferenced_scene(world / "scene", tile=tile, grid=grid, seed=seed)
    model, _, tokenizer = load_for_inference(checkpoint=checkpoint, device="cpu")
    S = model_input_size(model)
    common = dict(model=model, tokenizer=tokenizer, out=out, scale=2 * S / tile, progress=False, html=True, log=None)
    seg = segment(scene["image"], classes_file=world / "ovss" / "classes.txt", vector="gpkg", min_area=4.0,
                  **common)[0]
    loc = locate(["storage tank", "ship"], scene["image"], threshold=0.5, **common)[0]
    with rasterio.open(seg.geotiff) as a, rasterio.open(scene["labels"]) as b:
        agreement = float(np.mean(a.read(1) == b.read(1)))
    return {"scene": scene, "segment": seg, "locate": loc, "agreement": agreement}


def run_seeds(out: str | Path = "runs/quickstart-seeds", seeds=(0, 1, 2), size: str = "full") -> Path:
    """The quickstart once per seed (world, initialisation and data order all change), then ``seeds.md``: the
    table of :func:`farslip.quickstart.analysis.seed_table` with the seconds each run took."""
    out = Path(out)
    for i, seed in enumerate(seeds):
        _say(f"seed {seed} ({i + 1}/{len(seeds)})")
        run_quickstart(out / f"seed-{seed}", size=size, seed=seed)
    return summarise_seeds(out, seeds, size)


def summarise_seeds(out: Path, seeds, size: str = "full") -> Path:
    """``OUT/seeds.md`` and ``OUT/seeds.json`` from the runs in ``OUT/seed-N`` (also for runs made in parallel)."""
    runs, seconds = {}, {}
    for seed in seeds:
        saved = json.loads((Path(out) / f"seed-{seed}" / "results.json").read_text())
        runs[seed], seconds[seed] = saved["results"], saved["total_s"]
    text = (f"Seeds {', '.join(map(str, seeds))} (`farslip quickstart --size {size} --seeds "
            f"{' '.join(map(str, seeds))}`); mean ± sample standard deviation.\n\n{seed_table(runs)}\n\n"
            f"Seconds per run: {', '.join(f'{s}: {t:.0f}' for s, t in seconds.items())}.\n")
    atomic_write(Path(out) / "seeds.md", text)
    atomic_write(Path(out) / "seeds.json", json.dumps({"results": runs, "total_s": seconds}, indent=2, default=str))
    print(f"\n{text}\n[quickstart] written to {Path(out) / 'seeds.md'}")
    return Path(out) / "seeds.md"
