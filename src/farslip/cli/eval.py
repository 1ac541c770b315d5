"""``farslip eval {classification,retrieval,ovss,all}``: the paper's table for any checkpoint, or the same
protocols on a user's own data."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.protocols import HALF_MODEL_CHOICES, PROTOCOLS, SAM3_AUTOCAST_CHOICES
from ..models.attention import ATTENTION_VARIANTS

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
  farslip eval ovss --protocol segearth-ov3 --checkpoint sam3.pt --data-root /data/rs-bench
  farslip eval ovss --protocol sam3-clip-fuse --checkpoint sam3.pt --clip-checkpoint farslip2-vit-b-16 \
      --data-root /data/rs-bench --datasets loveda
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
                        "safetensors, farslip's own) or an open_clip pretrained tag such as 'openai'; with a SAM 3 "
                        "protocol: SAM 3's weights (sam3.pt, the Hub's facebook/sam3 files, or the name sam3)")
    g.add_argument("--clip-checkpoint", default=None,
                   help="SAM 3 protocols: the CLIP of the fusions (sam3-clip-*) and of eval all's classification and "
                        "retrieval (a file or a released model's name; --model etc. apply to it)")
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
                        "configs -- CLS-bias -0.3, per-dataset thresholds (docs/benchmarks.md); segearth-ov3: "
                        "SegEarth-OV3's SAM 3 protocol (--checkpoint = SAM 3); sam3-clip-rescore / sam3-clip-fuse / "
                        "sam3-clip-presence: SAM 3 fused with the CLIP of --clip-checkpoint (docs/protocols.md)")
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
                   help="windows per encoder call (default: 64 on a GPU, about 1024 token rows on the CPU; SAM 3: "
                        "8 on a GPU, 1 on the CPU)")
    s3 = p.add_argument_group("SAM 3 protocols (segearth-ov3, sam3-clip-rescore, sam3-clip-fuse, sam3-clip-presence)")
    s3.add_argument("--confidence-threshold", type=_threshold, default=None,
                    help="objects kept when sigmoid(logit) x presence exceeds it (default: each dataset's "
                         "confidence_threshold in SegEarth-OV3's configs, 0.5 elsewhere)")
    s3.add_argument("--no-instances", action="store_true", help="leave out the instance masks (use_transformer_decoder)")
    s3.add_argument("--no-semantic", action="store_true", help="leave out the semantic head (use_sem_seg)")
    s3.add_argument("--no-presence", action="store_true", help="do not multiply by the presence score")
    s3.add_argument("--sam3-autocast", default=None, choices=list(SAM3_AUTOCAST_CHOICES),
                    help="bf16 autocast on CUDA only (default, as SegEarth-OV3), always, or never (fp32)")
    s3.add_argument("--clip-weight", type=float, default=None, help="the CLIP's weight in a fusion (0.5; 0 = SAM 3)")
    s3.add_argument("--clip-protocol", default=None, choices=["farslip", "segearth"],
                    help="the CLIP protocol whose dense settings a fusion uses (default segearth)")
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
    clip = dict(attn=args.attn, scale=args.scale, crop=args.crop, stride=args.stride, logit_scale=args.logit_scale,
                cls_lambda=args.cls_lambda, cls_from=args.cls_from, threshold=args.threshold,
                background_index=args.bg_idx, window_to_model_size=resize, simfeatup=args.simfeatup,
                half_model=args.half_model)
    sam3 = dict(confidence=args.confidence_threshold, instances=False if args.no_instances else None,
                semantic=False if args.no_semantic else None, presence=False if args.no_presence else None,
                autocast=args.sam3_autocast, clip_weight=args.clip_weight, clip_protocol=args.clip_protocol)
    return {**clip, **{k: v for k, v in sam3.items() if v is not None}}


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
        "ovss": ("open-vocabulary semantic segmentation (8 sets: mIoU; --protocol farslip, segearth, segearth-ov3 "
                 "or a SAM 3 + CLIP fusion)", _add_ovss_args),
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
    _add_table_command(sub, fmt)
    _add_ablations_command(sub, fmt)
    _add_compare(sub, fmt)


TABLE_EPILOG = """\
examples:
  farslip eval table runs/stage1/eval runs/stage2/eval                      # folders holding results.json
  farslip eval table base=runs/eval/openai/results.json ours=runs/stage2/eval --paper farslip2-vit-b-16
  farslip eval table runs/*/eval-all --detail --markdown

One table per task, a column per dataset and a row per run; rows of the paper's numbers for runs of released
models (and --paper NAME); every mean says over how many of the task's sets it is (35.41 (8/8)); each table names
the protocol of its numbers (OVSS rows made with another protocol than the published numbers' are flagged).
"""

ABLATIONS_EPILOG = """\
examples:
  farslip eval ablations --data-root /data/rs-bench                      # configs/eval/ablations.yaml
  farslip eval ablations configs/eval/ablations.yaml --data-root /data/rs-bench --markdown
  farslip eval ablations --no-evaluate                                   # print what is already evaluated

Train the rows first (farslip train --config configs/ablations/<name>.yaml ...); each trained model
(run.out/final.pt) is evaluated once with the suites of `eval all` and its results kept in run.out/eval-all/.
"""


def _add_table_command(sub, fmt) -> None:
    p = sub.add_parser("table", help="several runs' results in one table per task, beside the paper's numbers",
                       description="Gather several results.json (farslip eval's outputs) into one table per task "
                                   "and dataset, with the paper's published numbers beside them.",
                       formatter_class=fmt, epilog=TABLE_EPILOG)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="results.json, or the folder holding it; LABEL=PATH names the row")
    p.add_argument("--paper", nargs="+", default=[], metavar="NAME",
                   help="also the published numbers of these released models (farslip model list)")
    p.add_argument("--no-paper", action="store_true", help="no rows of published numbers")
    p.add_argument("--detail", action="store_true", help="also one table per task and dataset, every metric")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (for a README or an issue)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the tables as JSON")
    p.set_defaults(func=run_table)


def _add_ablations_command(sub, fmt) -> None:
    p = sub.add_parser("ablations", help="evaluate the ablation recipes' models and print the ablation tables",
                       description="Evaluate every trained model an ablation recipe names (once; results kept in "
                                   "each run.out/eval-all/) and print the paper's ablation tables.",
                       formatter_class=fmt, epilog=ABLATIONS_EPILOG)
    p.add_argument("recipe", nargs="?", default="configs/eval/ablations.yaml",
                   help="ablation recipe (default %(default)s)")
    p.add_argument("--data-root", default=None, help="root of the registered benchmarks (as eval all)")
    p.add_argument("--root", action="append", default=[], metavar="KIND=DIR", help="as eval all")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME", help="only these benchmarks")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--redo", action="store_true", help="evaluate again even where results are kept")
    p.add_argument("--no-evaluate", action="store_true", help="evaluate nothing; print the kept results")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(4, CPUs))")
    p.add_argument("--limit", type=int, default=None, help="only the first N records of each dataset (smoke runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--markdown", action="store_true", help="Markdown tables")
    p.set_defaults(func=run_ablations)


def run_table(args) -> int:
    """``farslip eval table``: :func:`farslip.eval.results_tables`, printed."""
    import json

    from ..core.errors import UsageError
    from ..core.files import atomic_write
    from ..eval import format_tables, results_tables

    labels, paths = [], []
    for item in args.runs:
        label, sep, path = item.partition("=")
        labels.append(label if sep else None)
        paths.append(path if sep else item)
    named = [label for label in labels if label]
    if named and len(named) != len(labels):
        raise UsageError("name every RUN (LABEL=PATH) or none")
    if args.json:
        from ..core.files import refuse_overwriting_inputs

        if Path(args.json).suffix.lower() != ".json":
            raise UsageError(f"--json {args.json}: give a .json file name")
        refuse_overwriting_inputs([args.json], [Path(p) / "results.json" if Path(p).is_dir() else Path(p)
                                                for p in paths], hint="choose another --json")
    tables = results_tables(paths, labels=named or None, paper=args.paper, published=not args.no_paper,
                            detail=args.detail)
    print(format_tables(tables, markdown=args.markdown))
    if args.json:
        atomic_write(args.json, json.dumps([t.to_dict() for t in tables], indent=2) + "\n")
    return 0


def run_ablations(args) -> int:
    """``farslip eval ablations``: :func:`farslip.eval.ablation_tables`, printed."""
    from ..eval import EvalOptions, ablation_tables, format_tables

    if not args.no_evaluate and args.data_root is None and not args.root:
        from ..core.errors import UsageError

        raise UsageError("eval ablations: give --data-root DIR (or --no-evaluate to print the kept results)")
    options = EvalOptions(workers=args.workers, limit=args.limit, progress=not args.no_progress)
    tables = ablation_tables(args.recipe, data_root=args.data_root, roots=_parse_roots(args.root),
                             datasets=args.datasets, run_missing=not args.no_evaluate, redo=args.redo,
                             device=args.device, options=options)
    print(format_tables(tables, markdown=args.markdown))
    return 0


COMPARE_EPILOG = """\
examples:
  farslip eval compare --protocols farslip segearth-ov3 sam3-clip-fuse --dataset loveda --data-root /data/rs-bench \\
      --clip-checkpoint farslip2-vit-b-16 --sam3-checkpoint sam3.pt
  farslip eval compare --protocols segearth-ov3 sam3-clip-rescore sam3-clip-presence --img-dir my/img \\
      --ann-dir my/ann --classes-file my/classes.txt --clip-checkpoint model.pt --sam3-checkpoint sam3.pt

Each protocol runs on the same images (its results.json in OUTPUT/<protocol>/); the per-class IoU and the means are
printed side by side and written to OUTPUT/compare.md and OUTPUT/compare.json. Which protocol helps on your data
is what this measures: the fusions have no published numbers (docs/protocols.md).
"""


def _add_compare(sub, fmt) -> None:
    p = sub.add_parser("compare", help="several OVSS protocols on one dataset, per-class IoU side by side",
                       description="Run several OVSS protocols (CLIP, SAM 3, fusions) on one dataset and print "
                                   "per-class IoU and mean mIoU side by side.", formatter_class=fmt,
                       epilog=COMPARE_EPILOG)
    p.add_argument("--protocols", nargs="+", required=True, choices=list(PROTOCOLS), metavar="PROTOCOL",
                   help=f"two or more of {', '.join(PROTOCOLS)}")
    p.add_argument("--dataset", default=None, help="a registered OVSS benchmark (name or alias)")
    p.add_argument("--clip-checkpoint", default=None, help="the CLIP of the CLIP protocols and of the fusions")
    p.add_argument("--sam3-checkpoint", default=None, help="SAM 3's weights (sam3.pt, the Hub's files, or sam3)")
    p.add_argument("--model", default=None, help="the CLIP's open_clip architecture (when its file does not tell)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off", "bf16"], help="the CLIP's autocast")
    g = p.add_argument_group("run")
    g.add_argument("--data-root", default=None, help="root of the registered benchmarks")
    g.add_argument("--root", action="append", default=[], metavar="KIND=DIR", help="e.g. --root ovss=/mnt/data")
    g.add_argument("--output", default=None, help="folder of the runs and compare.md (default runs/eval/compare-*)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    g.add_argument("--limit", type=int, default=None, help="only the first N images")
    g.add_argument("--on-error", default="skip", choices=["skip", "raise"])
    g.add_argument("--no-progress", action="store_true")
    o = p.add_argument_group("own data (instead of --dataset)")
    o.add_argument("--img-dir", default=None)
    o.add_argument("--ann-dir", default=None)
    o.add_argument("--classes-file", default=None)
    o.add_argument("--img-suffix", default=".png")
    o.add_argument("--ann-suffix", default=".png")
    o.add_argument("--ignore-index", type=int, default=255)
    o.add_argument("--reduce-zero-label", action="store_true")
    o.add_argument("--name", default=None)
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    """``farslip eval compare``: :func:`farslip.eval.compare.compare`, its table printed."""
    from ..eval import EvalOptions, OVSSData
    from ..eval.compare import compare

    own = None
    if args.img_dir or args.ann_dir or args.classes_file:
        own = OVSSData(args.img_dir, args.ann_dir, args.classes_file, img_suffix=args.img_suffix,
                       ann_suffix=args.ann_suffix, ignore_index=args.ignore_index,
                       reduce_zero_label=args.reduce_zero_label, name=args.name)
    options = EvalOptions(amp=args.amp, workers=args.workers, limit=args.limit, on_error=args.on_error,
                          progress=not args.no_progress, overlays=0)
    cmp = compare(args.protocols, args.dataset, data_root=args.data_root, roots=_parse_roots(args.root), own=own,
                  clip_checkpoint=args.clip_checkpoint, sam3_checkpoint=args.sam3_checkpoint, arch=args.model,
                  device=args.device, output=args.output, options=options)
    print()
    print(cmp.table())
    for p in cmp.protocols:
        print(f"  {p}: {cmp.settings[p].get('line', '')}")
    print(f"wrote {cmp.paths['markdown']} and {cmp.paths['json']}")
    return 0


# ----------------------------------------------------------------------------------------------------------------

def run_command(args) -> int:
    """``farslip eval SUITE``: :func:`farslip.eval.evaluate` with the options given, and its report printed."""
    from ..core.errors import FarslipError
    from ..eval import evaluate
    from ..eval.report import console_report

    run = evaluate(args.eval_kind, args.checkpoint, data_root=args.data_root, roots=_parse_roots(args.root),
                   datasets=args.datasets, own=_own_data(args), output=args.output, arch=args.model,
                   device=args.device, precision=args.precision, quick_gelu=args.quick_gelu,
                   context_length=args.context_length, rs_ovss_method=args.rs_ovss_method, options=_options(args),
                   clip_checkpoint=args.clip_checkpoint)
    if run.paths is None:  # another rank under torchrun: the first one prints
        return run.status
    print()
    print(console_report(run.report))
    published = run.report["meta"].get("published")
    if published:
        numbers = ", ".join(f"{k} {v:g}" for k, v in published["numbers"].items())
        print(f"published for {published['model']}: {numbers} (protocols in docs/models.md; compare a mean only "
              "when all of its sets ran)\n")
    print(f"wrote {run.paths['json']} and {run.paths['markdown']}")
    if run.status == 2:
        raise FarslipError("nothing was evaluated (see the missing/failed notes above)")
    return run.status


def _parse_roots(items: list[str]) -> dict[str, str]:
    from ..core.errors import UsageError

    roots = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--root expects KIND=DIR, got {item!r}")
        kind, folder = item.split("=", 1)
        roots[kind] = folder
    return roots


def _own_data(args):
    """The user's own dataset the options describe, or None (the registered benchmarks)."""
    from ..eval import ClassificationData, OVSSData, RetrievalData

    kind = args.eval_kind
    if kind == "classification" and (args.csv or args.classnames):
        return ClassificationData(args.csv, args.classnames, images=args.images, templates=args.templates,
                                  img_key=args.csv_img_key, class_key=args.csv_class_key,
                                  separator=args.csv_separator, name=args.name)
    if kind == "retrieval" and args.csv:
        return RetrievalData(args.csv, images=args.images, caption_key=args.caption_key, img_key=args.csv_img_key,
                             separator=args.csv_separator, prefix=args.prefix, name=args.name)
    if kind == "ovss" and (args.img_dir or args.ann_dir or args.classes_file):
        return OVSSData(args.img_dir, args.ann_dir, args.classes_file, img_suffix=args.img_suffix,
                        ann_suffix=args.ann_suffix, ignore_index=args.ignore_index,
                        reduce_zero_label=args.reduce_zero_label, name=args.name)
    return None


def _options(args):
    from ..eval import EvalOptions

    ovss = {}
    if args.eval_kind in ("ovss", "all"):
        ovss = dict(protocol=args.protocol, protocol_overrides=ovss_overrides(args),
                    window_batch_size=args.window_batch_size, overlays=args.overlays)
    return EvalOptions(amp=args.amp, batch_size=args.batch_size, workers=args.workers, limit=args.limit,
                       on_error=args.on_error, progress=not args.no_progress,
                       ties=getattr(args, "ties", "official"), **ovss)
