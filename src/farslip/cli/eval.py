"""``farslip eval {classification,retrieval,ovss,all}``: the paper's table for any checkpoint, or the same
protocols on a user's own data."""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from ..engine.protocols import HALF_MODEL_CHOICES, PROTOCOLS
from ..models.dense import ATTENTION_VARIANTS

EPILOG_ALL = """\
Layout under --data-root (see docs/benchmarks.md for sources and preparation):
  classification/  SkyScript benchmark zips unpacked: aid/ eurosat/ fmow/ millionaid/ nwpu/ patternnet/
                   rsicb256/ SkyScript_cls/  (each with its *_img_txt_pairs_*.csv and classnames.txt)
  retrieval/       RSICD/ RSITMD/ ucmcaptions/  (SkyScript's retrieval zips)
  skyscript/       SkyScript_test_30K_filtered_by_CLIP_openai.csv + the image folders it names
  ovss/            SegEarth-OV's data/ folder: OpenEarthMap/ LoveDA/ iSAID/ potsdam/ vaihingen/ UAVid/ UDD/ VDD/
A missing dataset is reported with the paths that were expected and the others still run.
"""

EXAMPLES = {
    "classification": """\
examples:
  farslip eval classification --checkpoint farslip2-vit-b-16 --data-root /data/rs-bench
  farslip eval classification --checkpoint ckpt.pt --data-root /data/rs-bench --datasets aid eurosat
  farslip eval classification --checkpoint ckpt.pt --model ViT-B-32 \\
      --csv my/test.csv --classnames my/classnames.txt --images my/ --name my-scenes
""",
    "retrieval": """\
examples:
  farslip eval retrieval --checkpoint farslip2-vit-b-16 --data-root /data/rs-bench
  farslip eval retrieval --checkpoint ckpt.pt --data-root /data/rs-bench --datasets rsicd ucm
  farslip eval retrieval --checkpoint ckpt.pt --csv my/pairs.csv --images my/ --caption-key title \\
      --prefix "a satellite image. "
""",
    "ovss": """\
examples:
  farslip eval ovss --checkpoint farslip2-vit-b-16 --data-root /data/rs-bench
  farslip eval ovss --checkpoint ckpt.pt --data-root /data/rs-bench --datasets loveda potsdam --attn sclip
  farslip eval ovss --checkpoint ckpt.pt --img-dir my/img --ann-dir my/ann --classes-file my/classes.txt \\
      --img-suffix .tif --ann-suffix .png --threshold 0.3 --bg-idx 0 --reduce-zero-label
  farslip eval ovss --checkpoint ckpt.pt --data-root /data/rs-bench --protocol segearth \
      --simfeatup SegEarth-OV/simfeatup_dev/weights/xclip_jbu_one_million_aid.ckpt
  (a class file has one class a line in label order, synonyms separated by commas: building,roof,house)
""",
    "all": """\
examples:
  farslip eval all --checkpoint farslip2-vit-b-16 --data-root /data/rs-bench
  farslip eval all --checkpoint ckpt.pt --data-root /data/rs-bench --datasets aid rsicd loveda --limit 50
""",
}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", "--pretrained", dest="checkpoint", default=None,
                   help="a released model's name (farslip model list) or a checkpoint file (any form load_model reads: "
                        "DDP state dict, FarSLIP long-text, OpenAI, "
                        "safetensors, farslip's own) or an open_clip pretrained tag such as 'openai'")
    g.add_argument("--model", default=None, help="open_clip architecture (ViT-B-16, ViT-B-32, ...); optional when the "
                                                 "checkpoint identifies it")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="model weights' precision (default fp32; with --amp auto the encoders still run in fp16 "
                        "autocast on CUDA, as the official scripts' precision=amp)")
    g.add_argument("--amp", default="auto", choices=["auto", "on", "off", "bf16"],
                   help="autocast of the encoders. auto (default, the official protocol): float16 on CUDA for an "
                        "fp32 model, none on CPU; on: float16 on CUDA; off: none; bf16: bfloat16 on any device -- "
                        "about 3x faster OVSS on a CPU with avx512_bf16/AMX, not the paper's protocol (a few pixels "
                        "in a thousand change class; see docs/performance.md)")
    act = g.add_mutually_exclusive_group()
    act.add_argument("--quick-gelu", dest="quick_gelu", action="store_const", const=True, default=None,
                     help="QuickGELU activations (default: chosen by the weights -- QuickGELU for OpenAI-lineage "
                          "files, GELU for open_clip's laion tags, a farslip checkpoint's own setting)")
    act.add_argument("--no-quick-gelu", dest="quick_gelu", action="store_const", const=False,
                     help="GELU activations (open_clip's own trainings)")
    g.add_argument("--context-length", type=int, default=None, help="text positions (default: read off the weights)")
    g.add_argument("--rs-ovss-method", default=None, metavar="NAME",
                   help="load as RS-OVSS builds that --method (FarSLIP1, FarSLIP2, LRSCLIP, GeoRSCLIP, RemoteCLIP, "
                        "SkyCLIP, CLIP, CLIP-long): its text length by name, the file's text positions resized to "
                        "it, its activation -- to rebuild a row of the paper's OVSS table as it was made")


def _dataset_name(csv: str | None, img_dir: str | None) -> str:
    """A custom dataset's name in the tables: the CSV's stem, or the image folder's name skipping layout folders
    (``LoveDA/img_dir/val`` -> ``LoveDA``)."""
    if csv:
        return Path(csv).stem
    path = Path(img_dir).resolve()
    layout = {"val", "valid", "validation", "test", "train", "img_dir", "images", "imgs", "image"}
    return next((p.name for p in (path, *path.parents) if p.name and p.name.lower() not in layout), path.name)


def _add_run_args(p: argparse.ArgumentParser, kind: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--data-root", default=None, help="root of the registered benchmarks (layout: see below)")
    g.add_argument("--root", action="append", default=[], metavar="KIND=DIR",
                   help="move one top folder of the layout, e.g. --root ovss=/mnt/segearth/data (kinds: "
                        "classification, retrieval, skyscript, ovss)")
    g.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="registered datasets to run (names or aliases, case-insensitive; default: all)")
    g.add_argument("--output", default=None, help="folder for results.json, results.md and overlays "
                                                  "(default runs/eval/<checkpoint>-<kind>-<time>)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default 128; OVSS: 4 images, their windows batched together)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(4, CPUs))")
    g.add_argument("--limit", type=int, default=None, help="only the first N records of each dataset (smoke runs)")
    g.add_argument("--on-error", default="skip", choices=["skip", "raise"],
                   help="bad records (unreadable image, bad row): skip and count (default) or stop")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--name", default=None, help="name of a custom dataset in the tables (default: file stem)")
    if kind in ("classification", "retrieval", "all"):
        g.add_argument("--ties", default="official", choices=["official", "stable", "optimistic", "pessimistic"],
                       help="ranking of equal scores (default: as the official scripts' torch sort/topk)")


def _add_classification_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("own data (instead of --data-root)")
    g.add_argument("--csv", default=None, help="table with an image-path column and a label column")
    g.add_argument("--classnames", default=None, help="one class name a line, in label order")
    g.add_argument("--images", default=None, help="folder the CSV's paths are relative to (default: CSV's folder)")
    g.add_argument("--csv-img-key", default="filepath")
    g.add_argument("--csv-class-key", default="label")
    g.add_argument("--csv-separator", default=",")
    g.add_argument("--templates", nargs="+", default=None, metavar="T",
                   help="prompt templates with {c} for the class (default: 'a satellite photo of {c}.' "
                        "'a satellite image of {c}')")


def _add_retrieval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("own data (instead of --data-root)")
    g.add_argument("--csv", default=None, help="image-caption table (several rows per image allowed)")
    g.add_argument("--images", default=None, help="folder the CSV's paths are relative to (default: CSV's folder)")
    g.add_argument("--caption-key", default="title")
    g.add_argument("--csv-img-key", default="filepath")
    g.add_argument("--csv-separator", default=",")
    g.add_argument("--prefix", default="", help="text prepended to every caption")


def _threshold(text: str):
    if text == "dataset":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'dataset', got {text!r}") from None


def _add_ovss_args(p: argparse.ArgumentParser, own: bool = True) -> None:
    g = p.add_argument_group("OVSS protocol (each value defaults to the protocol's; given, it overrides it for "
                             "registered datasets too)")
    g.add_argument("--protocol", default="farslip", choices=list(PROTOCOLS),
                   help="farslip (default): NJU-LHRS/RS-OVSS eval_customized.py, the FarSLIP paper's table -- no "
                        "CLS-bias, no threshold, windows resized to the model's input; segearth: SegEarth-OV's "
                        "configs -- CLS-bias -0.3, per-dataset thresholds (docs/benchmarks.md)")
    g.add_argument("--attn", default=None, choices=list(ATTENTION_VARIANTS),
                   help="last-block attention variant (both protocols: segearth)")
    g.add_argument("--scale", type=int, default=None, help="resize to fit SCALE x SCALE keeping the ratio (448; "
                                                           "0: none)")
    g.add_argument("--crop", type=int, default=None, help="sliding window size (224)")
    g.add_argument("--stride", type=int, default=None, help="sliding window step (112)")
    g.add_argument("--logit-scale", type=float, default=None, help="softmax temperature (50)")
    g.add_argument("--cls-lambda", type=float, default=None, help="CLS-token bias weight (farslip 0, segearth -0.3)")
    g.add_argument("--cls-from", default=None, choices=["surgery", "ordinary"],
                   help="CLS embedding for the bias: the modified block's CLS row (both protocols) or the usual one")
    g.add_argument("--threshold", type=_threshold, default=None,
                   help="score under which a pixel is background (farslip: none; segearth: each dataset's; "
                        "'dataset': each dataset's own)")
    g.add_argument("--bg-idx", type=int, default=None, help="background class index (default: the dataset's)")
    g.add_argument("--window-resize", default=None, choices=["on", "off"],
                   help="resize windows that are not the model's input size to it (farslip on, segearth off)")
    g.add_argument("--simfeatup", default=None, metavar="FILE",
                   help="SegEarth-OV's SimFeatUp weights (xclip_jbu_one_million_aid.ckpt): upsample the dense "
                        "features before the cosine (SegEarth-OV's default configuration)")
    g.add_argument("--half-model", default=None, choices=list(HALF_MODEL_CHOICES),
                   help="float16 model as the official codes run it: on CUDA (default), always, never")
    g.add_argument("--window-batch-size", type=int, default=None,
                   help="windows per encoder call (default: 64 on a GPU, about 1024 token rows on the CPU)")
    g.add_argument("--overlays", type=int, default=3, help="image|prediction|truth PNGs per dataset (0: none)")
    if own:
        o = p.add_argument_group("own data (instead of --data-root)")
        o.add_argument("--img-dir", default=None)
        o.add_argument("--ann-dir", default=None)
        o.add_argument("--classes-file", default=None,
                       help="one class a line in label order, synonyms with commas; or a shipped set by name "
                            "(openearthmap, loveda, ...)")
        o.add_argument("--img-suffix", default=".png")
        o.add_argument("--ann-suffix", default=".png")
        o.add_argument("--ignore-index", type=int, default=255)
        o.add_argument("--reduce-zero-label", action="store_true", help="label 0 = no data; classes start at 1")


def ovss_overrides(args) -> dict:
    """The protocol values given on the command line (None: the protocol's)."""
    resize = {"on": True, "off": False, None: None}[args.window_resize]
    return dict(attn=args.attn, scale=args.scale, crop=args.crop, stride=args.stride, logit_scale=args.logit_scale,
                cls_lambda=args.cls_lambda, cls_from=args.cls_from, threshold=args.threshold,
                background_index=args.bg_idx, window_to_model_size=resize, simfeatup=args.simfeatup,
                half_model=args.half_model)


def add_commands(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    ev = subparsers.add_parser(
        "eval", help="zero-shot classification, retrieval and OVSS with the paper's protocols",
        description="Evaluate a checkpoint with the paper's protocols on the registered benchmarks "
                    "(--data-root) or on your own data.", formatter_class=fmt, epilog=EPILOG_ALL)
    sub = ev.add_subparsers(dest="eval_command", metavar="SUITE")
    ev.set_defaults(func=lambda args: (ev.print_help(), 1)[1])
    specs = {
        "classification": ("zero-shot scene classification (8 sets: top-1/top-5)", _add_classification_args),
        "retrieval": ("image-text retrieval (4 sets: R@1/5/10/100 both ways)", _add_retrieval_args),
        "ovss": ("open-vocabulary semantic segmentation (8 sets: mIoU; --protocol farslip or segearth)",
                 _add_ovss_args),
        "all": ("all three suites on the registered benchmarks (the paper's table)", None),
    }
    for kind, (helptext, extra) in specs.items():
        p = sub.add_parser(kind, help=helptext, description=helptext, formatter_class=fmt,
                           epilog=EXAMPLES[kind] + "\n" + EPILOG_ALL)
        _add_model_args(p)
        _add_run_args(p, kind)
        if extra is not None:
            extra(p)
        if kind == "all":
            _add_ovss_args(p, own=False)
        p.set_defaults(func=run_command, eval_kind=kind)


# ----------------------------------------------------------------------------------------------------------------

def _parse_roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--root expects KIND=DIR, got {item!r}")
        k, v = item.split("=", 1)
        if k not in ("classification", "retrieval", "skyscript", "ovss"):
            raise SystemExit(f"--root: unknown kind {k!r} (classification, retrieval, skyscript, ovss)")
        roots[k] = v
    return roots


def _load(args):
    import torch

    import farslip

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint is None:
        print("warning: no --checkpoint: evaluating randomly initialised weights", file=sys.stderr)
    if args.model is None and args.checkpoint is None:
        raise SystemExit("give --checkpoint and/or --model")
    model, _, preprocess, tokenizer = farslip.load_model(
        args.model, args.checkpoint, device=device, precision=args.precision, quick_gelu=args.quick_gelu,
        context_length=args.context_length, rs_ovss_method=args.rs_ovss_method)
    model.eval()
    if str(device) == "cpu" and args.amp == "auto" and args.eval_kind in ("ovss", "all"):
        from ..models.precision import cpu_has_native_bf16

        if cpu_has_native_bf16():
            print("note: this CPU computes bf16 natively; --amp bf16 runs OVSS about 3x faster (not the paper's "
                  "fp32 arithmetic: a few pixels in a thousand change class)", file=sys.stderr)
    return model, preprocess, tokenizer, device


def published_numbers(checkpoint) -> dict | None:
    """The numbers the registry records for a checkpoint given by name, to print beside the measured ones."""
    from ..models.registry import find_entry

    entry = find_entry(checkpoint)
    if entry is None or not entry.paper:
        return None
    return {"model": entry.name, "numbers": dict(entry.paper), "per_set": dict(entry.paper_sets)}


def _custom_mode(args) -> bool:
    kind = args.eval_kind
    if kind == "classification":
        return bool(args.csv or args.classnames)
    if kind == "retrieval":
        return bool(args.csv)
    if kind == "ovss":
        return bool(args.img_dir or args.ann_dir or args.classes_file)
    return False


def _options(args, kind: str) -> dict:
    opts = {"num_workers": args.workers, "limit": args.limit, "show_progress": not args.no_progress,
            "amp": {"auto": None, "on": True, "off": False, "bf16": "bf16"}[args.amp]}
    if kind == "ovss":
        opts.update(protocol=args.protocol, window_batch_size=args.window_batch_size, overlays=args.overlays,
                    **ovss_overrides(args))
        if args.batch_size:
            opts["batch_size"] = args.batch_size
    else:
        opts["ties"] = args.ties
        opts["batch_size"] = args.batch_size or 128
    return opts


def _default_output(args, kind: str) -> Path:
    stem = Path(args.checkpoint).stem if args.checkpoint else (args.model or "model")
    return Path("runs") / "eval" / f"{stem}-{kind}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_command(args) -> int:
    from ..core import distributed

    if distributed.launched():  # torchrun: join the group, one GPU per local rank
        ctx = distributed.join(args.device or "auto")
        args.device = str(ctx.device)
    rc = _run(args, distributed.is_main())
    distributed.leave()
    return rc


def _run(args, main: bool) -> int:
    """The evaluation; under torchrun every rank runs it on its share of each dataset and gets the same
    numbers, and only the first (``main``) prints and writes the report."""
    from ..core import distributed
    from ..eval.report import console_report, write_report
    from ..eval.suite import run_custom, run_registered

    log = print if main else (lambda _line: None)
    kind = args.eval_kind
    custom = _custom_mode(args)
    if not custom and not args.data_root and not args.root:
        raise SystemExit(f"farslip eval {kind}: give --data-root DIR (registered benchmarks)"
                         + ("" if kind == "all" else " or your own data (see --help)"))
    if custom and (args.datasets or args.data_root):
        raise SystemExit("use either --data-root/--datasets or your own data, not both")
    if custom:
        need = {"classification": ("csv", "classnames"), "retrieval": ("csv",),
                "ovss": ("img_dir", "ann_dir", "classes_file")}[kind]
        lacking = ["--" + n.replace("_", "-") for n in need if not getattr(args, n)]
        if lacking:
            raise SystemExit(f"farslip eval {kind}: own data also needs {' '.join(lacking)}")
    out_dir = Path(args.output) if args.output else _default_output(args, kind)
    _refuse_outputs_over_inputs(args, out_dir)
    roots = _parse_roots(args.root)
    kinds = ["classification", "retrieval", "ovss"] if kind == "all" else [kind]
    chosen = {}
    if not custom:
        from ..eval.registry import select, select_any

        try:
            chosen = select_any(args.datasets) if kind == "all" else {kind: select(kind, args.datasets)}
        except KeyError as exc:
            raise SystemExit(str(exc.args[0]))
    if kind in ("ovss", "all") and args.simfeatup:  # a bad weights file stops here, not after the model loads
        from ..engine.simfeatup import read_simfeatup_state

        read_simfeatup_state(args.simfeatup)
    model, preprocess, tokenizer, device = _load(args)
    sections = {}
    if custom:
        name = args.name or _dataset_name(getattr(args, "csv", None), getattr(args, "img_dir", None))
        opts = _options(args, kind)
        if kind == "classification":
            kw = dict(csv_path=args.csv, classnames_path=args.classnames, image_root=args.images,
                      templates=args.templates, csv_img_key=args.csv_img_key, csv_class_key=args.csv_class_key,
                      csv_separator=args.csv_separator)
        elif kind == "retrieval":
            kw = dict(csv_path=args.csv, image_root=args.images, caption_key=args.caption_key, prefix=args.prefix,
                      csv_img_key=args.csv_img_key, csv_separator=args.csv_separator)
        else:
            from ..engine.class_files import resolve_class_file
            from ..eval.ovss import OVSSDataset

            class_file = str(resolve_class_file(args.classes_file))  # a file, or a shipped set by name
            kw = dict(dataset=OVSSDataset(args.img_dir, args.ann_dir, class_file, name=name,
                                          img_suffix=args.img_suffix, ann_suffix=args.ann_suffix,
                                          ignore_index=args.ignore_index, reduce_zero_label=args.reduce_zero_label))
        sections[kind] = run_custom(kind, model, tokenizer, preprocess, name, on_error=args.on_error,
                                    overlay_root=out_dir / "overlays", log=log, **kw, **opts)
    else:
        from ..engine import TextEmbeddingCache

        cache = TextEmbeddingCache()
        for k in kinds:
            if kind == "all" and args.datasets and not chosen[k]:
                continue
            sections[k] = run_registered(k, model, tokenizer, preprocess, data_root=args.data_root, roots=roots,
                                         names=[b.name for b in chosen[k]], on_error=args.on_error, text_cache=cache,
                                         overlay_root=out_dir / "overlays" if k == "ovss" else None,
                                         log=log, **_options(args, k))
    report = {"meta": {"checkpoint": args.checkpoint, "model": getattr(model, "farslip_arch", args.model),
                       "device": str(device), "precision": args.precision, "amp": args.amp,
                       "data_root": args.data_root, "when": _dt.datetime.now().isoformat(timespec="seconds"),
                       "processes": distributed.world()[1]},
              "sections": sections}
    if "ovss" in sections:
        report["meta"]["ovss"] = sections["ovss"]["protocol"]
    published = published_numbers(args.checkpoint)
    if published:
        report["meta"]["published"] = published
    if main:
        print()
        print(console_report(report))
        if published:
            numbers = ", ".join(f"{k} {v:g}" for k, v in published["numbers"].items())
            print(f"published for {published['model']}: {numbers} (protocols in docs/models.md; compare a mean only "
                  "when all of its sets ran)\n")
        paths = write_report(report, out_dir)
        print(f"wrote {paths['json']} and {paths['markdown']}")
    evaluated = sum(s["evaluated"] for s in sections.values())
    failed = sum(len(s["failed"]) for s in sections.values())
    if evaluated == 0:
        print("nothing was evaluated (see the missing/failed notes above)", file=sys.stderr)
        return 2
    return 1 if failed else 0


def _refuse_outputs_over_inputs(args, out_dir: Path) -> None:
    """results.json, results.md and overlays/ must not replace the files or folders being evaluated."""
    from ..core.errors import UsageError
    from ..core.files import refuse_overwriting_inputs

    files = [getattr(args, k, None) for k in ("csv", "classnames", "classes_file")]
    refuse_overwriting_inputs([out_dir / "results.json", out_dir / "results.md"], [f for f in files if f],
                              hint="choose another --output")
    overlays = (out_dir / "overlays").resolve()
    for option in ("img_dir", "ann_dir"):
        folder = getattr(args, option, None)
        if folder and (Path(folder).resolve() == overlays or overlays in Path(folder).resolve().parents):
            raise UsageError(f"--output {out_dir}: its overlays/ would be written into --{option.replace('_', '-')} "
                             f"{folder}; choose another --output")
