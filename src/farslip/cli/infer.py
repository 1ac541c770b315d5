"""``farslip segment | locate | classify | search | view``: FarSLIP on real imagery from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.errors import UsageError

SEGMENT_EPILOG = """\
examples:
  farslip segment scene.tif --checkpoint runs/quickstart/farslip-tiny-stage2.pt \\
      --classes "building,roof,house" road "water,river" "tree,forest" --out maps/
  farslip segment S2_tile.tif --bands 4,3,2 --checkpoint farslip2-vit-b-16 \\
      --classes-file openearthmap --threshold 0.1 --scale 0.5
  farslip segment scene.tif --checkpoint model.pt --classes "building,roof" road water --out maps/ \\
      --vector gpkg --min-area 20 --simplify 0.5 --html
  farslip segment "scenes/*.tif" @more_scenes.txt --checkpoint model.pt --classes road water --out maps/
  torchrun --nproc_per_node=4 -m farslip segment items.json --stac-asset visual --checkpoint model.pt \\
      --classes road water --out maps/       # STAC ItemCollection, files dealt to 4 GPUs
  farslip segment "archive/**/*.tif" --checkpoint model.pt --classes road water --out maps/ \\
      --engine ray --address head-node:6379  # a Ray cluster: one model actor per GPU, failures retried
  farslip segment scene.tif --checkpoint runs/quickstart/farslip-tiny-stage2.pt --protocol farslip \\
      --classes "building,roof,house" road "tree,forest" --out maps/

A rerun skips the inputs whose outputs are complete (recorded in OUT/.farslip-done/; --redo to redo them),
whichever engine made them, and removes what an earlier run with other settings wrote and this one does not (e.g. its .gpkg). An input's outputs
are finished together: a failure leaves none of them. Class prompts are encoded once per model and kept in
~/.cache/farslip (FARSLIP_CACHE_DIR; FARSLIP_NO_CACHE=1 turns it off).
Each class is one argument; synonyms are joined by commas and a class scores by its best synonym (SegEarth-OV's
class files; --classes-file also takes a shipped set by name: openearthmap, loveda, isaid, potsdam, vaihingen,
uavid, udd5, vdd). --checkpoint takes a file or a released model's name (farslip model list). Output (rasters
are Cloud-Optimized GeoTIFFs with the input's CRS/transform/size): OUT/<name>.tif (uint8 class index,
255 = nodata, class names in the metadata and a colour table), OUT/<name>.confidence.tif (float32 probability
of the shown class, NaN = nodata), OUT/<name>.png (preview with legend), OUT/<name>.json (summary); with
--probabilities OUT/<name>.probabilities.tif (a band per class), with --vector the class regions as polygons
(class, class_index, area, pixels, mean_confidence), with --html OUT/<name>.html.
16-bit and float inputs are stretched to 8 bits between the 2nd and 98th percentiles."""


#: The protocols of segment (and, from segearth-ov3 on, of locate).
SEGMENT_PROTOCOLS = ("farslip", "segearth", "segearth-ov3", "sam3-clip-rescore", "sam3-clip-fuse",
                     "sam3-clip-presence")
SAM3_PROTOCOLS = SEGMENT_PROTOCOLS[2:]


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", required=True,
                   help="a released model's name (farslip model list: downloaded and cached) or any checkpoint file "
                        "load_model reads (FarSLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP, OpenAI, farslip's own); with a "
                        "SAM 3 protocol: SAM 3's weights (sam3.pt, the Hub's facebook/sam3 files, or the name sam3)")
    g.add_argument("--model", dest="arch", default=None,
                   help="open_clip architecture (not needed for farslip checkpoints or when the shapes tell)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    g.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="autocast of the encoders. auto: float16 on CUDA (as the evaluation), fp32 on CPU; bf16: "
                        "bfloat16 on any device -- about 3x faster on a CPU with avx512_bf16/AMX, slightly "
                        "different numbers (a few pixels in a thousand change class in segment)")


def _class_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", nargs="+", metavar="CLASS", help='class names; "a,b" makes synonyms of one class')
    p.add_argument("--classes-file", help="one class per line, synonyms separated by commas; or a shipped set by "
                                          "name: openearthmap, loveda, isaid, potsdam, vaihingen, uavid, udd5, vdd")


def _scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=float, default=1.0, help="resample the image by this factor before inference")
    p.add_argument("--resampling", default="opencv-linear", choices=["opencv-linear", "gdal-bilinear"],
                   help="how --scale resamples. opencv-linear (default): OpenCV's bilinear resize of the whole image, "
                        "as the OVSS protocols and farslip eval resize (exact, tile by tile); gdal-bilinear: GDAL's "
                        "bilinear in the read (uses a raster's overviews; other pixels, so other maps). The outputs "
                        "record it (FARSLIP_RESAMPLING)")


def _input_args(p: argparse.ArgumentParser, many: bool = True) -> None:
    g = p.add_argument_group("many inputs (also under torchrun: files dealt to the processes)")
    g.add_argument("--inputs-from", metavar="LIST", help="a text file of input paths, one a line (same as @LIST)")
    g.add_argument("--stac-asset", metavar="KEY",
                   help="asset of each item of a STAC ItemCollection JSON input (default: visual, image or data)")
    if many:
        g.add_argument("--redo", action="store_true",
                       help="redo inputs whose outputs are already complete (default: skip them)")


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (docs/scaling.md says which to use when)")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local (default): this process, or the processes torchrun started (inputs dealt up front); "
                        "ray: the model actors of a Ray cluster take the inputs as they are free, a worker that "
                        "dies is replaced and its input tried again (pip install 'farslip[ray]')")
    g.add_argument("--address", default=None,
                   help="the Ray cluster to join, e.g. head-node:6379 (default: RAY_ADDRESS, else a Ray started on "
                        "this machine for the run)")
    g.add_argument("--actors", type=int, default=None,
                   help="model actors (default: one per GPU of the cluster; without GPUs one per CPU)")


def _engine(args) -> dict:
    return dict(engine=args.engine, address=args.address, actors=args.actors)


def _expanded_many(p_help: str) -> str:
    return (p_help + "; also glob patterns (quoted), @LIST text files of paths, STAC ItemCollection .json files")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="open-vocabulary segmentation of images/rasters of any size (GeoTIFF out)",
                       description="Segment images into the classes you name, with FarSLIP's dense features.",
                       epilog=SEGMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help=_expanded_many("PNG, JPEG, TIFF or GeoTIFF files"))
    _model_args(p)
    _class_args(p)
    _input_args(p)
    p.add_argument("--out", default="segmentations", help="output folder (default: segmentations/)")
    p.add_argument("--bands", help="1-based bands for R,G,B of multi-band inputs, e.g. 4,3,2")
    p.add_argument("--protocol", default=None, choices=list(SEGMENT_PROTOCOLS),
                   help="an OVSS evaluation protocol's settings (farslip, segearth: window 224/112, CLS-bias, window "
                        "resize, float16 model on CUDA; see docs/benchmarks.md) instead of the raster-friendly "
                        "defaults (windows of the model's input size, CLS-bias -0.3); the raster is not fitted to "
                        "448 px either way; the options below still override it. segearth-ov3: SAM 3 as "
                        "SegEarth-OV3 runs it (--checkpoint = SAM 3's weights, windows 512/512); sam3-clip-rescore, "
                        "sam3-clip-fuse, sam3-clip-presence: SAM 3 fused with the CLIP of --clip-checkpoint "
                        "(docs/protocols.md)")
    p.add_argument("--threshold", type=float, default=None,
                   help="best-class probability under this -> background (default 0: none)")
    p.add_argument("--background-index", type=int, default=None,
                   help="class index that takes low-confidence pixels (default 0)")
    p.add_argument("--attn", default=None, choices=["segearth", "sclip", "clearclip", "maskclip", "vanilla"],
                   help="attention of the modified last block (default segearth)")
    p.add_argument("--cls-lambda", type=float, default=None, help="global-bias weight (default -0.3, as SegEarth-OV)")
    _scale_args(p)
    p.add_argument("--window", type=int, default=None, help="sliding-window size (default: the model's input size)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: half the window)")
    p.add_argument("--block", type=int, default=1024,
                   help="output pixels per tile side, rounded to whole window strides (bounds memory; the map does "
                        "not depend on it)")
    _sam3_args(p)
    p.add_argument("--no-confidence", action="store_true", help="do not write OUT/<name>.confidence.tif")
    p.add_argument("--probabilities", action="store_true",
                   help="also write OUT/<name>.probabilities.tif, every class's probability (a float32 band each)")
    p.add_argument("--vector", metavar="gpkg|geojson|PATH",
                   help="polygons of the class regions: gpkg/geojson -> OUT/<name>.<format>; or a .gpkg/.geojson path "
                        "(GeoPackage in the raster's CRS, GeoJSON in WGS84 as RFC 7946 asks)")
    _vector_args(p)
    p.add_argument("--no-progress", action="store_true")
    _engine_args(p)
    p.set_defaults(func=run_segment)

    add_map_commands(sub)

    p = sub.add_parser("classify", help="zero-shot scene classification of images (top-k table)",
                       description="Zero-shot classification with the paper's prompt ensemble.",
                       epilog="example:\n  farslip classify tiles/*.png --checkpoint model.pt --classes airport "
                              "harbor farmland forest --top-k 3 --out predictions.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help=_expanded_many("image or raster files"))
    _model_args(p)
    _class_args(p)
    _input_args(p, many=False)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", help="write predictions as .csv or .json")
    p.add_argument("--no-progress", action="store_true")
    _engine_args(p)
    p.set_defaults(func=run_classify)

    p = sub.add_parser("search", help="text or image search over folders of images or inside large rasters",
                       description="Index a folder or the chips of a raster once (cached, incremental), then query.",
                       epilog="examples:\n  farslip search index tiles/ --checkpoint model.pt\n"
                              "  farslip search query \"a harbour with many ships\" --index tiles/ "
                              "--checkpoint model.pt --top 20\n  farslip search query tiles/a.png --index tiles/ "
                              "--checkpoint model.pt\n"
                              "  farslip search index scene.tif --checkpoint model.pt --chip 224 --stride 112\n"
                              "  farslip search query \"a harbour\" --index scene.tif --checkpoint model.pt "
                              "--geojson hits.geojson",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = p.add_subparsers(dest="search_command", metavar="{index,query}")
    pi = ssub.add_parser("index", help="embed every image under a folder, or the chips of a raster (reuses "
                                       "unchanged files)")
    pi.add_argument("folder", metavar="FOLDER_OR_RASTER")
    pi.add_argument("--chip", type=int, default=None,
                    help="index CHIP x CHIP windows of each image at full resolution instead of whole images")
    pi.add_argument("--stride", type=int, default=None, help="pixels between chips (default: half a chip)")
    pi.add_argument("--batch-size", type=int, default=32, help="images (or chips) per encoder batch")
    _model_args(pi)
    pi.add_argument("--no-progress", action="store_true")
    _engine_args(pi)
    pi.set_defaults(func=run_index)
    pq = ssub.add_parser("query", help="rank indexed images by a text or an image")
    pq.add_argument("query", help="text, or the path of an image")
    pq.add_argument("--index", required=True, help="the indexed folder or raster")
    _model_args(pq)
    pq.add_argument("--top", type=int, default=20)
    pq.add_argument("--sheet", default=None, help="contact-sheet PNG path, .png (default: search_results.png)")
    pq.add_argument("--geojson", default=None,
                    help="the hits' footprints as GeoJSON, WGS84 (default: search_results.geojson when the hits are "
                         "chips)")
    pq.set_defaults(func=run_query)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _amp(args) -> str | None:
    return None if args.amp == "auto" else args.amp


def _many(args) -> dict:
    """The many-input options every map command shares."""
    return dict(inputs_from=args.inputs_from, stac_asset=args.stac_asset, redo=getattr(args, "redo", False))


def run_segment(args) -> int:
    import farslip
    from ..infer.segmentation import SegmentOptions
    from ..models.precision import cpu_has_native_bf16

    on_cpu = args.device == "cpu" or (args.device == "auto" and not _cuda())
    if on_cpu and args.amp == "auto" and args.protocol not in SAM3_PROTOCOLS and cpu_has_native_bf16():
        print("note: this CPU computes bf16 natively; --amp bf16 segments about 3x faster with a ViT-B "
              "(a few pixels in a thousand change class)", file=sys.stderr)
    opts = SegmentOptions(protocol=args.protocol, attn=args.attn, cls_lambda=args.cls_lambda,
                          threshold=args.threshold, background_index=args.background_index, window=args.window,
                          stride=args.stride, scale=args.scale, resampling=args.resampling, block=args.block,
                          progress=not args.no_progress, amp=_amp(args), bands=_bands(args.bands),
                          confidence=not args.no_confidence,
                          probabilities=args.probabilities, vector=args.vector, min_area=args.min_area,
                          simplify=args.simplify, html=args.html, **_sam3_options(args))
    run = farslip.segment(args.images, args.classes, checkpoint=args.checkpoint, classes_file=args.classes_file,
                          out=args.out, arch=args.arch, device=args.device, options=opts,
                          clip_checkpoint=args.clip_checkpoint, **_many(args), **_engine(args))
    return _report(run)


def _report(run) -> int:
    """The one summary of a run over many inputs (printed by the first process); exit 1 when an input failed."""
    if run.rank == 0 and (len(run.outcomes) > 1 or run.processes > 1 or run.count("complete")):
        print(run.line())
        for path, error in run.failures.items():
            print(f"   failed: {path}: {error}")
        if run.record is not None:
            print(f"   run record: {run.record}")
    return 1 if run.failures else 0


def run_classify(args) -> int:
    import farslip
    from ..infer.classify import table

    run = farslip.classify(args.images, args.classes, checkpoint=args.checkpoint, classes_file=args.classes_file,
                           top_k=args.top_k, arch=args.arch, device=args.device, progress=not args.no_progress,
                           amp=_amp(args), out=args.out, inputs_from=args.inputs_from, stac_asset=args.stac_asset,
                           **_engine(args))
    if run.rank == 0 and run.results:
        print(table(run.results))
        if args.out:
            print(f"wrote {args.out}")
    return _report(run)


def run_index(args) -> int:
    from ..core.distributed import launch_rank
    from ..infer.search import index

    summary = index(args.folder, checkpoint=args.checkpoint, arch=args.arch, device=args.device, chip=args.chip,
                    stride=args.stride, batch_size=args.batch_size, progress=not args.no_progress, amp=_amp(args),
                    **_engine(args))
    if launch_rank() == 0:
        print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0  # as segment and classify: an input that failed is the run's status


def run_query(args) -> int:
    from ..infer.search import query

    sheet = args.sheet or "search_results.png"
    hits = query(args.query, index=args.index, checkpoint=args.checkpoint, arch=args.arch, device=args.device,
                 top=args.top, amp=_amp(args), sheet=sheet, geojson=args.geojson or "auto")
    width = max((len(h.path) for h in hits), default=4)
    chips = any(h.window for h in hits)
    print(f"{'rank':>4}  {'score':>6}  path" + ("  window (col, row, width, height)" if chips else ""))
    for i, h in enumerate(hits, 1):
        print(f"{i:>4}  {h.score:>6.3f}  {h.path:<{width}}" + (f"  {h.window}" if h.window else ""))
    if hits:
        print(f"contact sheet: {sheet}")
    if hits and (args.geojson or chips):
        print(f"footprints: {args.geojson or Path(sheet).parent / 'search_results.geojson'}")
    return 0


LOCATE_EPILOG = """\
examples:
  farslip locate "storage tank" ship scene.tif --checkpoint runs/quickstart/farslip-tiny-stage2.pt --out where/
  farslip locate "storage tank,oil tank" S2.tif --bands 4,3,2 --checkpoint FarSLIP2_ViT-B-16.pt \\
      --threshold 0.6 --min-area 50 --vector-format geojson --html

The arguments that name existing files are the images, the others the queries (synonyms joined by commas).
Output per image and query: OUT/<image>.<query>.tif (float32 COG: the query's probability against the
background vocabulary, the input's CRS/transform, NaN = nodata); per image: OUT/<image>.regions.gpkg (connected
areas at or above --threshold: query, score, max_score, area), OUT/<image>.locate.png, OUT/<image>.locate.json,
with --html OUT/<image>.locate.html."""

VIEW_EPILOG = """\
examples:
  farslip view maps/scene.tif maps/scene.gpkg                 # -> maps/scene.html
  farslip view where/scene.storage-tank.tif where/scene.regions.gpkg --image scene.tif --out tanks.html

One self-contained HTML file (Leaflet inlined: works offline): the image, each raster as a semi-transparent layer
you switch on and off, legends, the polygons with their attributes. The image is found from the rasters'
FARSLIP_SOURCE tag unless --image is given."""


def _sam3_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SAM 3 protocols (--protocol segearth-ov3, sam3-clip-*)")
    g.add_argument("--clip-checkpoint", default=None,
                   help="the CLIP of the fusions sam3-clip-* (a file or a released model's name; --model is its "
                        "architecture)")
    g.add_argument("--confidence-threshold", type=float, default=None,
                   help="objects kept when sigmoid(logit) x presence exceeds it (default 0.5, SegEarth-OV3's "
                        "segmentor default)")
    g.add_argument("--no-instances", action="store_true", help="leave out the instance masks")
    g.add_argument("--no-semantic", action="store_true", help="leave out the semantic head")
    g.add_argument("--no-presence", action="store_true", help="do not multiply by the presence score")
    g.add_argument("--sam3-autocast", default=None, choices=["cuda", "always", "never"],
                   help="bf16 autocast on CUDA only (default, as SegEarth-OV3), always, or never (fp32)")
    g.add_argument("--clip-weight", type=float, default=None, help="the CLIP's weight in a fusion (0.5; 0 = SAM 3)")


def _sam3_options(args) -> dict:
    """The SAM 3 options given (None: the protocol's)."""
    return dict(confidence_threshold=args.confidence_threshold, instances=False if args.no_instances else None,
                semantic=False if args.no_semantic else None, presence=False if args.no_presence else None,
                sam3_autocast=args.sam3_autocast, clip_weight=args.clip_weight)


def _vector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-area", type=float, default=0.0,
                   help="leave out regions smaller than this, in the CRS's units^2 (m^2 in a metric CRS, deg^2 in a "
                        "geographic one, px^2 without a CRS)")
    p.add_argument("--simplify", type=float, default=0.0,
                   help="polygon simplification tolerance in the CRS's units (metres in a metric CRS)")
    p.add_argument("--html", action="store_true",
                   help="also write an offline interactive map (segment: OUT/<image>.html, locate: OUT/<image>.locate.html)")


def add_map_commands(sub) -> None:
    p = sub.add_parser("locate", help="text-to-map: a heatmap and regions per query over whole scenes",
                       description="Where in each image is each thing you name: FarSLIP's dense features over the "
                                   "whole raster, tiled exactly as segment.",
                       epilog=LOCATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="QUERY_OR_IMAGE",
                   help=_expanded_many("queries, then images (PNG, JPEG, GeoTIFF)"))
    _model_args(p)
    _input_args(p)
    p.add_argument("--out", default="locate", help="output folder (default: locate/)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability for a detected region (default 0.5)")
    p.add_argument("--background", nargs="+", metavar="NAME", default=None,
                   help="what a query must beat at a pixel (default: background, bare land, grass, tree, road, "
                        "building, water, farmland)")
    p.add_argument("--vector-format", default="gpkg", choices=["gpkg", "geojson"])
    _vector_args(p)
    p.add_argument("--bands", help="1-based bands for R,G,B of multi-band inputs, e.g. 4,3,2")
    _scale_args(p)
    p.add_argument("--window", type=int, default=None, help="sliding-window size (default: the model's input size)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: half the window)")
    p.add_argument("--block", type=int, default=1024, help="output pixels per tile side (bounds memory)")
    p.add_argument("--protocol", default=None, choices=list(SAM3_PROTOCOLS),
                   help="SAM 3 instead of the CLIP: segearth-ov3 (--checkpoint = SAM 3's weights; a query's heatmap "
                        "is SegEarth-OV3's map of its best name, windows 512/512), or a fusion with the CLIP of "
                        "--clip-checkpoint (docs/protocols.md)")
    _sam3_args(p)
    p.add_argument("--no-progress", action="store_true")
    _engine_args(p)
    p.set_defaults(func=run_locate)

    p = sub.add_parser("view", help="an offline interactive HTML map of farslip outputs",
                       description="Show class maps, heatmaps and polygons over the image in one HTML file.",
                       epilog=VIEW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", nargs="+", help="farslip rasters (.tif) and vector files (.gpkg, .geojson)")
    p.add_argument("--image", help="the picture underneath (default: the rasters' source image)")
    p.add_argument("--bands", help="1-based bands for R,G,B of a multi-band image, e.g. 4,3,2")
    p.add_argument("--out", help="HTML path, .html (default: beside the first output); never one of the files shown")
    p.add_argument("--max-side", type=int, default=2048, help="pixels of the page's images on their longer side")
    p.set_defaults(func=run_view)


def _bands(text: str | None) -> list[int] | None:
    from ..infer.common import parse_bands

    return parse_bands(text)


def run_locate(args) -> int:
    import farslip
    from ..core.memory import return_freed_memory
    from ..infer.inputs import names_input
    from ..infer.localization import BACKGROUND, LocateOptions

    images = [a for a in args.inputs if names_input(a)]
    queries = [a for a in args.inputs if not names_input(a)]
    if not (images or args.inputs_from) or not queries:
        raise UsageError("locate needs at least one query and one existing image file "
                         f"(got queries {queries or 'none'}, images {images or 'none'})")
    opts = LocateOptions(threshold=args.threshold, background=args.background or BACKGROUND,
                         min_area=args.min_area, simplify=args.simplify, vector_format=args.vector_format,
                         scale=args.scale, resampling=args.resampling, window=args.window, stride=args.stride,
                         block=args.block, bands=_bands(args.bands), progress=not args.no_progress, amp=_amp(args),
                         html=args.html, protocol=args.protocol, **_sam3_options(args))
    return_freed_memory()  # a whole scene's thousands of windows: keep the peak where the work is
    run = farslip.locate(queries, images, checkpoint=args.checkpoint, out=args.out, arch=args.arch,
                         device=args.device, options=opts, clip_checkpoint=args.clip_checkpoint, **_many(args),
                         **_engine(args))
    return _report(run)


def run_view(args) -> int:
    from ..infer.webmap import view

    print(f"wrote {view(args.outputs, args.out, image=args.image, bands=_bands(args.bands), max_side=args.max_side)}")
    return 0
