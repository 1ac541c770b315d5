"""``farslip quickstart``: the whole method on this machine, with nothing to download.

1. a synthetic remote-sensing world (scenes, land cover, objects; written in every format the project reads);
2. a tiny CLIP pretrained on its global captions (the stand-in for OpenAI CLIP);
3. FarSLIP stage 1 and 4. stage 2 from it, with the project's trainer and recipes;
5. the pretrained, stage-1 and stage-2 models evaluated on classification, retrieval and OVSS;
6. ``report.md`` with the tables and pictures, and the final model as a self-describing checkpoint.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from importlib import resources
from pathlib import Path

import torch

SIZES = {
    # n training images, image side, epochs of (pretrain, stage 1, stage 2), max steps per run (None = all)
    "full": {"n": 768, "image": 96, "epochs": (6, 1, 1), "max_steps": None, "batch": None, "overlays": 3,
             "map_grid": 4},
    "tiny": {"n": 48, "image": 64, "epochs": (1, 1, 1), "max_steps": 2, "batch": 8, "overlays": 1, "map_grid": 2},
}
ARCH = "FarSLIP-Tiny"
MIXED = 0.5  # share of two-scene images (training and OVSS): where patch tokens that describe the whole image fail
REAL_RECIPES = """\
farslip train --config configs/stage1_vitb16_rs5m.yaml --set data.train='/data/rs5m/{pub11,rs3}-train-{0000..0031}.tar'
farslip train --config configs/stage2_vitb16_mgrs.yaml --set data.train=/data/MGRS-200k/text_info.json \\
    --set model.pretrained=runs/stage1_vitb16_rs5m/final.pt
torchrun --nproc_per_node=4 -m farslip train --config configs/stage1_vitb16_rs5m.yaml   # the paper's 4 GPUs
farslip eval all --checkpoint runs/stage2_vitb16_mgrs/final.pt --data-root /data/benchmarks"""


def _say(msg: str) -> None:
    print(f"\n[quickstart] {msg}", flush=True)


def _recipe(name: str) -> Path:
    return Path(str(resources.files("farslip") / "resources" / f"quickstart_{name}.yaml"))


# The paper's schedules (configs/stage{1,2}_vitb16_*.yaml, from the official README commands), for the report.
PAPER_SCHEDULES = {
    "stage1": "ViT-B/16 from OpenAI CLIP; lr 1e-6, wd 1.0, warmup 1000, 1 epoch over 5.07 M RS5M pairs, "
              "batch 160 (4 GPUs x 40): about 31.7 k steps",
    "stage2": "ViT-B/16 from stage 1; lr 4e-9 (as written in the official command), wd 1.0, warmup 250, 10 epochs "
              "over MGRS-200k, batch 160: about 12.5 k steps",
    "pretrain": "(OpenAI CLIP's own pretraining: 400 M pairs)",
}


# The five models the report compares: each FarSLIP stage beside the same run with its new loss term switched off
# (the paper's ablation), so a change that more training alone would have made is not credited to the term.
PRE, S1, S1_ABL, S2, S2_ABL = ("pretrained (stand-in CLIP)", "FarSLIP stage 1", "stage 1 without distillation",
                               "FarSLIP stage 2", "stage 2 without region term")
MODELS = (PRE, S1_ABL, S1, S2_ABL, S2)


def _train(name: str, out: Path, overrides: dict, schedules: dict, run: str | None = None) -> Path:
    from .train import load_config, train

    cfg = load_config(_recipe(name), overrides)
    cfg.run.out = str(out / "runs" / (run or name))
    train(cfg, overwrite=True)  # the quickstart remakes its whole folder, its runs included
    log = [json.loads(x) for x in (Path(cfg.run.out) / "log.jsonl").read_text().splitlines() if x]
    o = cfg.optim
    schedules[run or name] = {"lr": o.lr, "weight_decay": o.weight_decay, "warmup": o.warmup, "epochs": o.epochs,
                       "batch_size": o.batch_size, "steps": max((e.get("step", 0) for e in log), default=0)}
    return Path(cfg.run.out) / "final.pt"


def run_quickstart(out: str | Path = "runs/quickstart", size: str = "full", seed: int = 0) -> Path:
    threads = torch.get_num_threads()
    # A 3-layer, 96-wide ViT is too small for intra-op parallelism to pay: one thread leaves the other core to the
    # data-loader workers, and a second thread only adds synchronisation (several times slower on a busy machine).
    torch.set_num_threads(1)
    try:
        return _run_quickstart(Path(out), SIZES[size], seed)
    finally:
        torch.set_num_threads(threads)


def _run_quickstart(out: Path, spec: dict, seed: int) -> Path:
    from .dataprep import synth_world

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings = {}

    def timed(label, fn, *a, **k):
        t = time.perf_counter()
        result = fn(*a, **k)
        timings[label] = time.perf_counter() - t
        return result

    torch.manual_seed(seed)
    _say(f"1/6 writing a synthetic world of {spec['n']} training images ({spec['image']} px, {MIXED:.0%} of them "
         f"two scenes side by side) to {out / 'world'}")
    world = out / "world"
    summary = timed("synthetic world", synth_world, world, n=spec["n"], seed=seed, size=spec["image"], overwrite=True,
                    shard_size=max(1, spec["n"] // 4), mixed=MIXED)  # four even shards: two per loader worker

    e_pre, e_s1, e_s2 = spec["epochs"]
    limit = {"max_steps": spec["max_steps"]} if spec["max_steps"] else {}
    if spec["batch"]:
        limit["batch_size"] = spec["batch"]
    _say("2/6 pretraining a tiny CLIP on the global captions (the stand-in for OpenAI CLIP)")
    schedules = {}
    pre = timed("pretrain", _train, "pretrain", out, {"data": {"train": str(world / "captions.csv")},
                                                       "optim": {"epochs": e_pre, **limit}}, schedules)
    def stage_and_ablation(recipe, label, start, train_data, epochs, term, weight, run):
        """The stage as the paper has it, then the same run with its new loss term's weight 0."""
        over = {"model": {"pretrained": str(start)}, "data": {"train": str(train_data)},
                "optim": {"epochs": epochs, **limit}}
        model = timed(label, _train, recipe, out, over, schedules)
        ablation = timed(f"{label} without {term}", _train, recipe, out, {**over, "objective": {weight: 0.0}},
                         {}, run=run)  # the ablations' schedules are the stage's: not listed again
        return model, ablation

    _say("3/6 FarSLIP stage 1: global ITC + patch-to-patch distillation on the RS5M-style shards "
         "(and the same run without the distillation term)")
    s1, s1_abl = stage_and_ablation("stage1", "stage 1", pre, world / "rs5m" / "*.tar", e_s1, "distillation",
                                    "distill_weight", "stage1-no-distill")
    _say("4/6 FarSLIP stage 2: global ITC + CLS-token region-category alignment on the MGRS-format data "
         "(and the same run without the region term)")
    s2, s2_abl = stage_and_ablation("stage2", "stage 2", s1, world / "mgrs" / "text_info.json", e_s2, "region term",
                                    "region_weight", "stage2-no-region")
    final = out / "farslip-tiny-stage2.pt"
    shutil.copyfile(s2, final)

    _say("5/6 evaluating the pretrained model, both stages and their ablations")
    models = {PRE: pre, S1_ABL: s1_abl, S1: s1, S2_ABL: s2_abl, S2: s2}
    shutil.rmtree(out / "overlays", ignore_errors=True)  # an earlier run's pictures are not this run's
    results = {}
    for i, (name, ckpt) in enumerate(models.items()):
        overlays = spec["overlays"] if name in (PRE, S2) else 0
        print(f"[quickstart]   {name} ({i + 1}/{len(models)}): classification, retrieval, OVSS, region crops, "
              f"dense metrics", flush=True)
        results[name] = timed(f"evaluate {name}", evaluate, ckpt, world, out / "overlays" / f"model{i}", overlays)

    _say("maps: segment and locate on a georeferenced scene of the world with the final model (COGs, polygons, HTML)")
    maps = timed("maps", maps_example, final, world, out / "maps", tile=spec["image"], grid=spec["map_grid"],
                 seed=seed)

    _say("6/6 writing the report")
    report = write_report(out, summary, models, results, timings, time.perf_counter() - t_start, final, schedules,
                          seed, maps=maps)
    print(f"\n[quickstart] done in {time.perf_counter() - t_start:.0f} s. Report: {report}\n"
          f"[quickstart] final model: {final}  (try: farslip segment IMAGE.tif --checkpoint {final} "
          f"--classes water forest building)")
    return report


REGION_TEMPLATES = ("a satellite image of {c}",)  # stage 2's region text (data.views region_template)


def evaluate(checkpoint: Path, world: Path, overlay_dir: Path, overlays: int) -> dict:
    """Classification, retrieval and OVSS on the world's held-out sets (OVSS scaled to the tiny model: images
    fit 2S, windows S, stride S/2 -- the 448/224/112 protocol at S = 64), plus what each FarSLIP stage targets:
    the dense metrics of :func:`dense_metrics` (stage 1) and zero-shot region-category accuracy on held-out object
    crops (stage 2)."""
    from .eval import OVSSDataset, ovss, retrieval, zero_shot_classification
    from .models import load_model

    model, _, preprocess, tokenizer = load_model(checkpoint=checkpoint)
    model.eval()
    S = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
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
    return {"classification": dict(cls), "classification_per_class": cls.info["per_class_top1"], "retrieval": dict(ret), "ovss_protocol": {"fit": 2 * S, "window": S,
                                                                                  "stride": S // 2},
            "regions": dict(regions), "dense": dense,
            "ovss": {k: v for k, v in seg.items() if not isinstance(v, dict)}, "ovss_iou": seg.get("IoU", {}),
            "overlays": sorted(str(p) for p in Path(overlay_dir).glob("**/*.png")) if overlays else []}


@torch.no_grad()
def dense_metrics(model, tokenizer, dataset, batch: int = 32) -> dict:
    """Stage 1's targets, on the held-out OVSS images squashed to the model's S x S input (as training sees them).

    ``patch_acc``: of the patches whose majority label (at least half the patch) is not background, the share
    whose dense token is nearest (cosine, synonym max, OVSS prompts) to the true class's text -- no CLS bias, no
    background rule: the dense features' own alignment with text.
    ``crop_agreement``: mean cosine between the RoI-pooled dense tokens of each 2 x 2 grid cell of the image and
    the mean dense token of the cell encoded on its own -- stage 1's patch-to-patch distillation agreement.
    Images go through the encoder ``batch`` at a time (the cells four times that).
    """
    import torch.nn.functional as F
    import torchvision.transforms.functional as TF

    from .engine import OVSS_TEMPLATES, name_embeddings, query_table
    from .engine.images import model_input_size, normaliser, read_label_array, read_rgb_array
    from .models.dense import dense_features
    from .objectives.distill import roi_pooled

    S, norm = model_input_size(model), normaliser(model)
    classes = dataset.classes()
    names, owner = query_table(classes)
    text = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES)
    cells = ((0, 0, .5, .5), (.5, 0, 1, .5), (0, .5, .5, 1), (.5, .5, 1, 1))
    hits = total = 0
    agreement = []
    pairs = list(dataset.pairs())
    for start in range(0, len(pairs), batch):
        images, labels, crops = [], [], []
        for image_path, label_path in pairs[start:start + batch]:
            pixels = torch.from_numpy(read_rgb_array(image_path)).permute(2, 0, 1)
            H, W = pixels.shape[1:]
            images.append(norm(TF.resize(pixels, [S, S], antialias=True)))
            labels.append(torch.from_numpy(read_label_array(label_path).astype("int64")))
            crops += [norm(TF.resize(pixels[:, int(y1 * H):int(y2 * H), int(x1 * W):int(x2 * W)], [S, S],
                                     antialias=True)) for x1, y1, x2, y2 in cells]
        tokens, _ = dense_features(model, torch.stack(images), with_cls=False)
        for tok, label in zip(tokens, labels):
            h, t = _patch_hits(tok, label, text, owner, len(classes), dataset.background_index, dataset.ignore_index)
            hits, total = hits + h, total + t
        crop_tokens, _ = dense_features(model, torch.stack(crops), with_cls=False)
        student = roi_pooled(tokens, torch.tensor([cells], dtype=torch.float32).expand(len(images), -1, -1))
        agreement += F.cosine_similarity(student, crop_tokens.mean(dim=(1, 2)), dim=-1).view(-1, 4).mean(1).tolist()
    return {"patch_acc": round(100 * hits / max(1, total), 2), "patches": total,
            "crop_agreement": round(sum(agreement) / max(1, len(agreement)), 4)}


def _patch_hits(tokens, label, text, owner, n_classes: int, background: int, ignore: int) -> tuple[int, int]:
    """(correct, counted) patches of one image's dense tokens ``[gh, gw, D]`` against its label map."""
    import torch.nn.functional as F

    sims = F.normalize(tokens, dim=-1) @ text.T  # [gh, gw, Q]
    scores = sims.new_full(sims.shape[:2] + (n_classes,), -2.0)
    scores.scatter_reduce_(2, owner.view(1, 1, -1).expand_as(sims), sims, reduce="amax")
    scores[..., background] = -2.0  # background is not a thing a patch can look like
    pred = scores.argmax(-1)
    gh, gw = pred.shape
    valid = label != ignore
    onehot = F.one_hot(label.clamp(0, n_classes - 1) * valid, n_classes).permute(2, 0, 1).float()
    share = F.adaptive_avg_pool2d(onehot * valid, (gh, gw))  # [C, gh, gw] fraction of each patch
    best, truth = share.max(0)
    keep = (best >= 0.5) & (truth != background)
    return int((pred[keep] == truth[keep]).sum()), int(keep.sum())


def maps_example(checkpoint: Path, world: Path, out: Path, tile: int, grid: int, seed: int = 0) -> dict:
    """A georeferenced mosaic of the world's scenes, segmented into the OVSS classes (class map, confidence,
    polygons, HTML map) and searched for storage tanks and ships with ``locate``, at the evaluation's scale (the
    tiles resized to 2S as in the OVSS protocol); the class map's agreement with the scene's truth."""
    import numpy as np
    import rasterio

    from .dataprep.synth.geoscene import write_georeferenced_scene
    from .infer import locate, segment
    from .infer.common import load_for_inference

    scene = write_georeferenced_scene(world / "scene", tile=tile, grid=grid, seed=seed)
    model, _, tokenizer = load_for_inference(checkpoint=checkpoint, device="cpu")
    S = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    common = dict(model=model, tokenizer=tokenizer, out=out, scale=2 * S / tile, progress=False, html=True, log=None)
    seg = segment(scene["image"], classes_file=world / "ovss" / "classes.txt", vector="gpkg", min_area=4.0,
                  **common)[0]
    loc = locate(["storage tank", "ship"], scene["image"], threshold=0.5, **common)[0]
    with rasterio.open(seg.geotiff) as a, rasterio.open(scene["labels"]) as b:
        agreement = float(np.mean(a.read(1) == b.read(1)))
    return {"scene": scene, "segment": seg, "locate": loc, "agreement": agreement}


def _maps_section(out: Path, maps: dict | None) -> str:
    if not maps:
        return ""
    seg, loc, scene = maps["segment"], maps["locate"], maps["scene"]
    rel = lambda p: Path(p).relative_to(out)  # noqa: E731
    found = ", ".join(f"{q.query}: {q.regions} regions ({q.area:.0f} m², max {q.max_score:.2f})" for q in loc.queries)
    return f"""## Maps of a georeferenced scene

`{rel(scene['image'])}`: {scene['size']} x {scene['size']} px at {scene['gsd_m']} m in {scene['crs']}, a mosaic of
the world's scene types. `farslip segment` (class map and confidence as Cloud-Optimized GeoTIFFs, polygons in
`{rel(seg.vectors)}`, the interactive map [`{rel(seg.html)}`]({rel(seg.html)})); the class map agrees with the scene's
truth on {100 * maps['agreement']:.1f}% of its pixels.

![segment]({rel(seg.preview)})

`farslip locate "storage tank" ship` (heatmap COGs, regions in `{rel(loc.regions)}`, map
[`{rel(loc.html)}`]({rel(loc.html)})): {found}.

![locate]({rel(loc.preview)})

"""


def loss_curves(out: Path, png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, name, keys in zip(axes, ("pretrain", "stage1", "stage2"),
                              (("global_itc",), ("global_itc", "distill"), ("global_itc", "region_itc"))):
        log = [json.loads(x) for x in (out / "runs" / name / "log.jsonl").read_text().splitlines()]
        log = [e for e in log if keys[0] in e]
        steps = [e["step"] for e in log]
        ax.plot(steps, [e[keys[0]] for e in log], label=keys[0], color="C0")
        if len(keys) > 1:  # the second term on its own axis: its scale can be far smaller
            twin = ax.twinx()
            twin.plot(steps, [e[keys[1]] for e in log], label=keys[1], color="C1")
            twin.set_ylabel(keys[1], color="C1")
            ax.plot([], [], color="C1", label=keys[1] + " (right axis)")
        ax.set_title({"pretrain": "pretraining (stand-in CLIP)", "stage1": "FarSLIP stage 1",
                      "stage2": "FarSLIP stage 2"}[name])
        ax.set_xlabel("step")
        ax.legend()
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def retrieval_example(checkpoint: Path, world: Path, png: Path, k: int = 5) -> tuple[str, str, list]:
    """One held-out caption, the model's top-k images for it, and whether the true image is among them."""
    import csv

    from .infer.search import Hit, contact_sheet
    from .models import load_model

    model, _, preprocess, tokenizer = load_model(checkpoint=checkpoint)
    model.eval()
    with open(world / "retrieval" / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = sorted({r["filepath"] for r in rows})
    query = rows[len(rows) // 3]
    from PIL import Image

    with torch.no_grad():
        ims = torch.stack([preprocess(Image.open(world / "retrieval" / p).convert("RGB")) for p in paths])
        img = model.encode_image(ims)
        txt = model.encode_text(tokenizer([query["title"]]))
        scores = (img / img.norm(dim=-1, keepdim=True)) @ (txt / txt.norm(dim=-1, keepdim=True))[0]
    vals, idx = scores.topk(min(k, len(paths)))
    hits = [Hit(str(world / "retrieval" / paths[i]), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]
    contact_sheet(hits, png, title=f'"{query["title"]}"', cols=k)
    return query["title"], query["filepath"], [Path(h.path).name for h in hits]


def _change(results: dict, before: str, after: str, key: tuple[str, str], unit: str = " points") -> str:
    a, b = results[before][key[0]][key[1]], results[after][key[0]][key[1]]
    return f"{a:g} -> {b:g} ({b - a:+.{3 if unit == '' else 2}f}{unit})"


def seed_table_link(anchor: str = "three-seeds") -> str:
    """A link to a section of docs/quickstart.md (the three-seed table by default): the checkout's file when there
    is one, else its name."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
    if docs.is_file():
        return f"[docs/quickstart.md]({docs.as_uri()}#{anchor})"
    return f"`docs/quickstart.md` (#{anchor}) in the farslip repository"


def verdicts(results: dict) -> list[str]:
    """One line per stage: the metric it targets, before and after, and how much of the change the stage's own
    loss term made (the stage against the same run with that term off)."""
    def term(after, ablation, key, unit=" points"):
        d = results[after][key[0]][key[1]] - results[ablation][key[0]][key[1]]
        return f"{d:+.{3 if unit == '' else 2}f}{unit}"

    return [f"* stage 1 (dense alignment): dense patch accuracy {_change(results, PRE, S1, ('dense', 'patch_acc'))}, "
            f"the distillation term's share {term(S1, S1_ABL, ('dense', 'patch_acc'))}; crop agreement "
            f"{_change(results, PRE, S1, ('dense', 'crop_agreement'), '')}, the term's share "
            f"{term(S1, S1_ABL, ('dense', 'crop_agreement'), '')}; OVSS mIoU {_change(results, PRE, S1, ('ovss', 'mIoU'))};",
            f"* stage 2 (region-category alignment): region-category accuracy "
            f"{_change(results, S1, S2, ('regions', 'top1'))}, the region term's share "
            f"{term(S2, S2_ABL, ('regions', 'top1'))}; image-level ZSC {_change(results, S1, S2, ('classification', 'top1'))}, "
            f"the region term's share {term(S2, S2_ABL, ('classification', 'top1'))}.",
            "(A term's share: the stage against the same run with that term's weight 0.)"]


def distill_share(out: Path) -> str:
    """Stage 1's distillation loss in this run's log: its mean, and its weighted share of the total loss."""
    log = [json.loads(x) for x in (out / "runs" / "stage1" / "log.jsonl").read_text().splitlines() if x]
    log = [e for e in log if "distill" in e and "total" in e and "global_itc" in e]
    if not log:
        return ""
    d, total, itc = (sum(e[k] for e in log) / len(log) for k in ("distill", "total", "global_itc"))
    return (f"Stage 1's distillation loss (1 - cosine) averaged {d:.4f} over its steps; weighted, it is "
            f"{(total - itc) / total:.1%} of the total loss: the stand-in's crops already agree with their in-context "
            f"tokens, so the term moves little ({seed_table_link('stage-1-does-not-improve-its-dense-metric-on-this-world-and-why')}).")


def zsc_per_class(results: dict) -> str:
    """Markdown: scene ZSC top-1 per class (correct of n) for stage 1 and both stage-2 runs: where ZSC is lost."""
    from .eval.report import markdown_table

    models = [m for m in (S1, S2_ABL, S2) if "classification_per_class" in results.get(m, {})]
    if not models:
        return ""
    classes = list(results[models[0]]["classification_per_class"])
    rows = [[c] + [f"{results[m]['classification_per_class'][c]['correct']}/"
                   f"{results[m]['classification_per_class'][c]['n']}" for m in models] for c in classes]
    return markdown_table(["scene class: ZSC top-1 correct"] + models, rows)


def write_report(out: Path, world_summary: dict, models: dict, results: dict, timings: dict, total: float,
                 final: Path, schedules: dict | None = None, seed: int = 0, maps: dict | None = None) -> Path:
    from .eval.report import markdown_table

    loss_curves(out, out / "loss_curves.png")
    caption, truth, top = retrieval_example(models[S2], out / "world", out / "retrieval_example.png")
    stage_rows, image_rows = [], []
    for name, r in results.items():
        c, t, s, d, g = r["classification"], r["retrieval"], r["ovss"], r["dense"], r["regions"]
        stage_rows.append([name, f"{d['patch_acc']:.2f}", f"{d['crop_agreement']:.3f}", f"{s['mIoU']:.2f}",
                           f"{s.get('aAcc', float('nan')):.2f}", f"{g['top1']:.2f}"])
        image_rows.append([name, f"{c['top1']:.2f}", f"{c['top5']:.2f}", f"{100 * t['text2img_mean']:.2f}",
                           f"{100 * t['img2text_mean']:.2f}"])
    stage_table = markdown_table(["model", "dense patch acc. % (stage 1)", "crop agreement (stage 1)",
                                  "OVSS mIoU % (stage 1)", "OVSS pixel acc. %", "region-category acc. % (stage 2)"],
                                 stage_rows)
    table = markdown_table(["model", "ZSC top-1 %", "ZSC top-5 %", "text->image mean R@1/5/10 %",
                            "image->text mean R@1/5/10 %"], image_rows)
    overlay_md = []
    for name, r in results.items():
        for p in r["overlays"]:
            overlay_md.append(f"![{name}]({Path(p).relative_to(out)})  \n*{name}: image | prediction | truth*\n")
    timing_rows = [[k, f"{v:.1f}"] for k, v in timings.items()] + [["total", f"{total:.1f}"]]
    scenes = ", ".join(world_summary.get("scenes", []))
    schedule_rows = [[name, f"lr {v['lr']:g}, wd {v['weight_decay']:g}, warmup {v['warmup']}, {v['epochs']} "
                            f"epoch(s), batch {v['batch_size']}: {v['steps']} steps", PAPER_SCHEDULES[name]]
                     for name, v in (schedules or {}).items()]
    proto = next(iter(results.values()))["ovss_protocol"]
    text = f"""# farslip quickstart report

**The data are synthetic.** Everything below was measured on a procedurally generated remote-sensing world
({world_summary.get('train_images')} training and {world_summary.get('test_images')} held-out images of
{world_summary.get('size')} px; scenes: {scenes}) with a tiny ViT (`{ARCH}`) on this machine's CPU.
The numbers show that the pipeline works end to end -- data formats, both FarSLIP stages, the three evaluation
protocols -- and say nothing about the paper's results, which need the real weights, RS5M / MGRS-200k and the
public benchmarks.

## What each stage targets (held-out synthetic images, seed {seed})

The world has the problem FarSLIP addresses: its global captions say what is in an image (scene, counted objects,
main land covers) but never where; {world_summary.get('train_mixed', 0)} of its training images are two scenes side
by side, captioned with both ("a harbor and a forest with ..."), and most objects are a few pixels across, smaller
than one ViT patch. A CLIP trained on such captions aligns its *global* embedding with text; its *patch* tokens
describe the whole image rather than their own place in it. Each stage is shown beside the same run with its new
loss term switched off (the paper's ablation), so that what more training alone does is not credited to the term.

{stage_table}

In this run:

{chr(10).join(verdicts(results))}

{distill_share(out)}

One run on a few minutes of CPU training moves these numbers by chance too: the mean and spread over three seeds,
and what they do and do not show, are in {seed_table_link()}.

Dense patch accuracy: of the {next(iter(results.values()))['dense']['patches']} held-out patches (image squashed to
the model's input) whose majority label covers at least half the patch and is not background, the share whose dense
token (SegEarth-OV's last block) is nearest to its true class's text (80 templates, synonym max; no CLS bias).
Crop agreement: cosine between the RoI-pooled dense tokens of each quarter of an image and the mean dense token of
that quarter encoded on its own -- what stage 1's patch-to-patch distillation trains. Region-category accuracy:
zero-shot over the {len(world_summary.get('categories', {}))} object categories ("a satellite image of
{{category}}") on {sum(world_summary.get('test_region_counts', {}).values())} held-out object crops (one per
category per image, boxes of at least 8 x 8 px, squashed to a square as stage 2's region views are).

## Image-level (held-out synthetic images)

{table}

ZSC: zero-shot scene classification ({len(world_summary.get('scenes', []))} classes, the paper's two templates).
Retrieval: unique images and captions, hit if a true partner is in the top k. OVSS: FarSLIP's protocol (RS-OVSS:
80 templates, synonym max, sliding windows, no CLS-bias, no threshold) scaled to the tiny model: images resized to fit
{proto['fit']} px, windows of {proto['window']} px, stride {proto['stride']} (the paper's 448 / 224 / 112 at 224 px).

Where stage 2 gains or loses scene ZSC, class by class (stage 2's region prompt "a satellite image of {{category}}"
is one of the two ZSC templates, so pulling object prompts toward object crops can carry a scene prompt along:
{seed_table_link('stage-2-does-what-it-is-for-it-costs-scene-zsc-on-this-world')}):

{zsc_per_class(results)}

## Training

{markdown_table(["step", "this run (scaled to the tiny model)", "the paper"], schedule_rows)}

The tiny model starts from scratch rather than from OpenAI CLIP, sees hundreds of images rather than millions, and
is about a thousand times smaller than ViT-B/16: its learning rates are a hundred times and more the paper's and
each FarSLIP stage is one epoch of a few dozen steps. Stage 2's rate stays below stage 1's, as in the paper. The
ablations run the same recipe with `objective.distill_weight` (stage 1) or `objective.region_weight` (stage 2) set to
0; the objectives' weights are otherwise the paper's (1 / 0.1 and 1 / 1).

![loss curves](loss_curves.png)

Logs: `runs/<step>/log.jsonl`, TensorBoard in `runs/<step>/tensorboard`, skipped records in `runs/<step>/skipped.jsonl`.

## Open-vocabulary segmentation

{chr(10).join(overlay_md) if overlay_md else '(no overlays at this size)'}

{_maps_section(out, maps)}## Retrieval example (stage-2 model)

Query: *"{caption}"* -- the true image is `{Path(truth).name}`; top {len(top)}: {', '.join(f'`{t}`' for t in top)}
({'found' if Path(truth).name in top else 'not found'} in the top {len(top)}).

![retrieval example](retrieval_example.png)

## Timings (seconds)

{markdown_table(["step", "seconds"], timing_rows)}

## The final model

`{final}` is a self-describing checkpoint: every command loads it with no other argument, e.g.

```bash
farslip segment scene.tif --checkpoint {final} --classes "water,river" "forest,tree" "building,roof" road
farslip classify tiles/*.png --checkpoint {final} --classes airport harbor farmland forest
farslip eval ovss --checkpoint {final} --img-dir {out / 'world/ovss/img_dir/val'} --ann-dir {out / 'world/ovss/ann_dir/val'} --classes-file {out / 'world/ovss/classes.txt'} --scale {proto['fit']} --crop {proto['window']} --stride {proto['stride']}
```

## The real recipes

```bash
{REAL_RECIPES}
```
"""
    path = out / "report.md"
    path.write_text(text)
    (out / "results.json").write_text(json.dumps({"results": results, "timings": timings, "total_s": total},
                                                 indent=2, default=str))
    return path


# (label, results key, field, scale, the stage whose effect the row shows)
SEED_ROWS = (("dense patch acc. %", "dense", "patch_acc", 1, 1), ("crop agreement", "dense", "crop_agreement", 1, 1),
             ("OVSS mIoU %", "ovss", "mIoU", 1, 1), ("region-category acc. %", "regions", "top1", 1, 2),
             ("ZSC top-1 %", "classification", "top1", 1, 2),
             ("text->image mean R %", "retrieval", "text2img_mean", 100, 2),
             ("image->text mean R %", "retrieval", "img2text_mean", 100, 2))
# per stage: (the model before it, the stage, the stage without its own loss term)
STAGE_MODELS = {1: (PRE, S1, S1_ABL), 2: (S1, S2, S2_ABL)}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return m, sd


def seed_table(runs: dict[int, dict]) -> str:
    """Markdown: per metric, each model's mean +- sample standard deviation over the seeds, then for the stage
    that targets the metric its change, seed by seed: against the model it started from (stage 1 - pretrained,
    stage 2 - stage 1) and against the same run without its loss term (the term's own share)."""
    from .eval.report import markdown_table

    models = [m for m in MODELS if m in next(iter(runs.values()))]
    digits = lambda label: 3 if label == "crop agreement" else 2  # noqa: E731 -- a cosine, not a percentage
    rows = []
    for label, group, field, scale, stage in SEED_ROWS:
        value = lambda model, seed: scale * runs[seed][model][group][field]  # noqa: E731
        d = digits(label)
        cells = [f"{m:.{d}f} ± {sd:.{d}f}" for m, sd in (_mean_sd([value(m, s) for s in runs]) for m in models)]
        before, after, ablation = STAGE_MODELS[stage]
        for base in (before, ablation):
            if base not in models:
                cells.append("")
                continue
            delta = [value(after, s) - value(base, s) for s in runs]
            cells.append(f"stage {stage}: {_mean_sd(delta)[0]:+.{d}f} ({', '.join(f'{x:+.{d}f}' for x in delta)})")
        rows.append([label] + cells)
    return markdown_table(["metric"] + models + ["change by its stage: mean (per seed)",
                                                 "of which its loss term: mean (per seed)"], rows)


def run_seeds(out: str | Path = "runs/quickstart-seeds", seeds=(0, 1, 2), size: str = "full") -> Path:
    """The quickstart once per seed (world, initialisation and data order all change), then ``seeds.md``: the
    table of :func:`seed_table` with the seconds each run took."""
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
    (Path(out) / "seeds.md").write_text(text)
    (Path(out) / "seeds.json").write_text(json.dumps({"results": runs, "total_s": seconds}, indent=2, default=str))
    print(f"\n{text}\n[quickstart] written to {Path(out) / 'seeds.md'}")
    return Path(out) / "seeds.md"


def _main(args) -> int:
    if args.seeds:
        run_seeds(args.out if args.out != "runs/quickstart" else "runs/quickstart-seeds", args.seeds, args.size)
    else:
        run_quickstart(args.out, args.size, args.seed)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="run the whole method on a synthetic world on this CPU (no download)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="output folder (default: runs/quickstart)")
    p.add_argument("--size", choices=sorted(SIZES), default="full",
                   help="full (about 5 minutes on 2 CPU cores) or tiny (a smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="run once per seed into OUT/seed-N and write OUT/seeds.md, each metric's mean and spread "
                        "(default OUT: runs/quickstart-seeds); docs/quickstart.md records seeds 0 1 2")
    p.set_defaults(func=_main)
