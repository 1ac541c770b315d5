"""``farslip segment | classify | search``: FarSLIP on real imagery from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SEGMENT_EPILOG = """\
examples:
  farslip segment scene.tif --checkpoint runs/quickstart/farslip-tiny-stage2.pt \\
      --classes "building,roof,house" road "water,river" "tree,forest" --out maps/
  farslip segment S2_tile.tif --bands 4,3,2 --checkpoint FarSLIP2_ViT-B-16.pt --model ViT-B-16 \\
      --classes-file configs/ovss/cls_openearthmap.txt --threshold 0.1 --scale 0.5

Each class is one argument; synonyms are joined by commas and a class scores by its best synonym (SegEarth-OV's
class files). Output: OUT/<name>.tif (uint8 class index, the input's CRS/transform/size, 255 = nodata, class
names in the metadata and a colour table), OUT/<name>.png (preview with legend), OUT/<name>.json (summary).
16-bit and float inputs are stretched to 8 bits between the 2nd and 98th percentiles."""


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", required=True,
                   help="any checkpoint load_model reads (FarSLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP, OpenAI, farslip's own)")
    g.add_argument("--model", dest="arch", default=None,
                   help="open_clip architecture (not needed for farslip checkpoints or when the shapes tell)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="autocast of the encoders. auto: float16 on CUDA (as the evaluation), fp32 on CPU; bf16: "
                        "bfloat16 on any device -- about 3x faster on a CPU with avx512_bf16/AMX, slightly "
                        "different numbers (a few pixels in a thousand change class in segment)")


def _class_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", nargs="+", metavar="CLASS", help='class names; "a,b" makes synonyms of one class')
    p.add_argument("--classes-file", help="one class per line, synonyms separated by commas")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="open-vocabulary segmentation of images/rasters of any size (GeoTIFF out)",
                       description="Segment images into the classes you name, with FarSLIP's dense features.",
                       epilog=SEGMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="PNG, JPEG, TIFF or GeoTIFF files")
    _model_args(p)
    _class_args(p)
    p.add_argument("--out", default="segmentations", help="output folder (default: segmentations/)")
    p.add_argument("--bands", help="1-based bands for R,G,B of multi-band inputs, e.g. 4,3,2")
    p.add_argument("--threshold", type=float, default=0.0, help="best-class probability under this -> background")
    p.add_argument("--background-index", type=int, default=0, help="class index that takes low-confidence pixels")
    p.add_argument("--attn", default="segearth", choices=["segearth", "sclip", "clearclip", "maskclip", "vanilla"],
                   help="attention of the modified last block")
    p.add_argument("--cls-lambda", type=float, default=-0.3, help="global-bias weight (SegEarth-OV: -0.3)")
    p.add_argument("--scale", type=float, default=1.0, help="resample the image by this factor before inference")
    p.add_argument("--window", type=int, default=None, help="sliding-window size (default: the model's input size)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: half the window)")
    p.add_argument("--block", type=int, default=1024,
                   help="output pixels per tile side, rounded to whole window strides (bounds memory; the map does "
                        "not depend on it)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_segment)

    p = sub.add_parser("classify", help="zero-shot scene classification of images (top-k table)",
                       description="Zero-shot classification with the paper's prompt ensemble.",
                       epilog="example:\n  farslip classify tiles/*.png --checkpoint model.pt --classes airport "
                              "harbor farmland forest --top-k 3 --out predictions.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+")
    _model_args(p)
    _class_args(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", help="write predictions as .csv or .json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_classify)

    p = sub.add_parser("search", help="text or image search over a folder of images",
                       description="Index a folder once (cached, incremental), then query it.",
                       epilog="examples:\n  farslip search index tiles/ --checkpoint model.pt\n"
                              "  farslip search query \"a harbour with many ships\" --index tiles/ "
                              "--checkpoint model.pt --top 20\n  farslip search query tiles/a.png --index tiles/ "
                              "--checkpoint model.pt",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = p.add_subparsers(dest="search_command", metavar="{index,query}")
    pi = ssub.add_parser("index", help="embed every image under a folder (reuses unchanged files)")
    pi.add_argument("folder")
    _model_args(pi)
    pi.add_argument("--no-progress", action="store_true")
    pi.set_defaults(func=run_index)
    pq = ssub.add_parser("query", help="rank indexed images by a text or an image")
    pq.add_argument("query", help="text, or the path of an image")
    pq.add_argument("--index", required=True, help="the indexed folder")
    _model_args(pq)
    pq.add_argument("--top", type=int, default=20)
    pq.add_argument("--sheet", default=None, help="contact-sheet PNG path (default: search_results.png)")
    pq.set_defaults(func=run_query)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _amp(args) -> str | None:
    return None if args.amp == "auto" else args.amp


def run_segment(args) -> int:
    from ..models.precision import cpu_has_native_bf16
    from ..infer.segmentation import SegmentOptions, segment

    on_cpu = args.device == "cpu" or (args.device == "auto" and not _cuda())
    if on_cpu and args.amp == "auto" and cpu_has_native_bf16():
        print("note: this CPU computes bf16 natively; --amp bf16 segments about 3x faster with a ViT-B "
              "(a few pixels in a thousand change class)", file=sys.stderr)
    opts = SegmentOptions(attn=args.attn, cls_lambda=args.cls_lambda, threshold=args.threshold,
                          background_index=args.background_index, scale=args.scale, window=args.window,
                          stride=args.stride, block=args.block, progress=not args.no_progress,
                          amp=_amp(args),
                          bands=[int(b) for b in args.bands.split(",")] if args.bands else None)
    results = segment(args.images, args.classes, checkpoint=args.checkpoint, classes_file=args.classes_file,
                      out=args.out, arch=args.arch, device=args.device, options=opts)
    for r in results:
        mp = r.pixels / max(r.seconds, 1e-9) / 1e6
        top = sorted(r.class_fractions.items(), key=lambda kv: -kv[1])[:5]
        print(f"{r.image} -> {r.geotiff} ({r.pixels / 1e6:.1f} Mpx, {mp:.2f} Mpx/s); preview {r.preview}")
        print("   " + ", ".join(f"{n} {100 * f:.1f}%" for n, f in top))
    return 0


def run_classify(args) -> int:
    from ..infer.classify import classify, table, write_predictions

    preds = classify(args.images, args.classes, checkpoint=args.checkpoint, classes_file=args.classes_file,
                     top_k=args.top_k, arch=args.arch, device=args.device, progress=not args.no_progress,
                     amp=_amp(args))
    print(table(preds))
    if args.out:
        print(f"wrote {write_predictions(preds, Path(args.out))}")
    return 0


def run_index(args) -> int:
    from ..infer.search import index

    summary = index(args.folder, checkpoint=args.checkpoint, arch=args.arch, device=args.device,
                    progress=not args.no_progress, amp=_amp(args))
    print(json.dumps(summary, indent=2))
    return 0


def run_query(args) -> int:
    from ..infer.search import contact_sheet, query

    hits = query(args.query, index=args.index, checkpoint=args.checkpoint, arch=args.arch, device=args.device,
                 top=args.top, amp=_amp(args))
    width = max((len(h.path) for h in hits), default=4)
    print(f"{'rank':>4}  {'score':>6}  path")
    for i, h in enumerate(hits, 1):
        print(f"{i:>4}  {h.score:>6.3f}  {h.path:<{width}}")
    if hits:
        print(f"contact sheet: {contact_sheet(hits, args.sheet or 'search_results.png', title=str(args.query))}")
    return 0
