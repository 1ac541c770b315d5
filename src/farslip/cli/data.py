"""``farslip data build|validate|stats|synth|caption``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.errors import UsageError, one_line

_RAW = argparse.RawDescriptionHelpFormatter

DATA_HELP = """\
Build, check and describe FarSLIP training data.

  build     detection dataset (DOTA, DIOR, FAIR1M, COCO JSON) -> MGRS-format data (text_info.json + global_imgs/)
  validate  check training data (MGRS JSON, webdataset shards, image-caption CSV) as the trainer reads it
  stats     counts of training data: MGRS objects, categories and box sizes (tables and a PNG chart); samples
            per shard, caption lengths and image sizes of shards and CSVs
  synth     a procedural remote-sensing world in every format the project reads (no download)
  caption   recompute the captions of an MGRS JSON (template, or a multimodal LLM)
"""

BUILD_EPILOG = """\
examples:
  # DOTA v1.0/v2.0 (images/P0000.png + labelTxt/P0000.txt), cut into 800 px chips overlapping by 200 px
  farslip data build --format dota --images DOTA/train/images --labels DOTA/train/labelTxt --out mgrs_dota \\
      --workers 8

  # iSAID or any COCO-style JSON (file_name relative to --images), no cutting
  farslip data build --format coco --images iSAID/train/images --labels iSAID/train/instances.json \\
      --out mgrs_isaid --chip-size 0

  # DIOR, difficult objects dropped, your own category names
  farslip data build --format dior --images DIOR/JPEGImages-trainval \\
      --labels "DIOR/Annotations/Horizontal Bounding Boxes" --out mgrs_dior --drop-difficult \\
      --category-map my_names.json

  # captions from a local vLLM server (OpenAI-compatible), cached and resumable
  farslip data build --format fair1m --images FAIR1M/train/images --labels FAIR1M/train/labelXml \\
      --out mgrs_fair1m --captioner mllm --mllm-url http://localhost:8000/v1 --mllm-model Qwen/Qwen2-VL-7B-Instruct

A second run with the same options resumes (images already cut are skipped); --overwrite starts again.
Problems (a label file without an image, an image without labels, bad records, degenerate boxes) are reported
and counted, never fatal; all of them are listed in OUT/build_report.json.
"""

VALIDATE_EPILOG = """\
examples:
  farslip data validate mgrs_dota                      # folder holding text_info.json
  farslip data validate '/data/rs5m/{pub11,rs3}-train-{0000..0031}.tar' --workers 16   # every sample decoded
  farslip data validate captions.csv --image-key filepath --caption-key title
  farslip data validate pairs.tsv --root images/       # a .tsv is tab-separated
  farslip data validate MGRS/text_info.json --header-only --workers 16
  farslip data validate world/mgrs --no-images --report findings.json
  farslip data validate other/train.json --root other/images   # global_filepath relative to other/images

Images are looked for as the official loader opens them, os.path.join(root, global_filepath): with --root in
that folder only; without it in the JSON's global_imgs/ (official layout), then in the JSON's folder (files whose
paths start with global_imgs/, which draws a warning: the official command then needs --root-train-img-dir set to
the JSON's folder).

The format follows the path (braces, globs, .tar and folders of tars: webdataset; .csv/.tsv: CSV; else MGRS);
--kind says it outright. Shards and CSVs are read as the trainer reads them (the same member keys -- img_content,
jpg, png, ... and caption, txt, text -- and the same decoder); the report lists each shard's sample count.

exit status: 0 when there are no errors (warnings allowed), 1 otherwise, 2 when the file cannot be read.
"""

STATS_EPILOG = """\
examples:
  farslip data stats mgrs_dota                        # tables on stdout, chart in mgrs_dota/text_info_stats.png
  farslip data stats MGRS/text_info.json --png stats.png --json stats.json
  farslip data stats '/data/rs5m/pub11-train-{0000..0031}.tar' --json rs5m_stats.json
  farslip data stats captions.csv
"""

SYNTH_EPILOG = """\
examples:
  farslip data synth --out world --n 2000 --seed 0           # 2000 training + 500 held-out images, 224 px
  farslip data synth --out tiny --n 16 --n-test 8 --seed 1   # a few seconds
  farslip data synth --out mixed --n 768 --size 96 --mixed 0.5  # the quickstart's world: half two-scene images

layout written:
  OUT/mgrs/text_info.json + global_imgs/    MGRS JSON with template captions (training images);
                                            global_filepath relative to global_imgs/
  OUT/rs5m/shard-000000.tar                 RS5M-style webdataset: img_content, img_name, caption
  OUT/captions.csv                          filepath,title (training images)
  OUT/cls/test.csv + classnames.txt         scene classification, held-out images (8 scene classes)
  OUT/retrieval/test.csv                    filepath,title, two captions per held-out image
  OUT/ovss/img_dir/val + ann_dir/val        segmentation PNGs + classes.txt (synonyms, background = 0)
  OUT/world.json                            counts, classes, seed and paths
The same --seed gives byte-identical files.
"""

CAPTION_EPILOG = """\
examples:
  farslip data caption mgrs_dota                                   # template captions, in place
  farslip data caption mgrs_dota --out mgrs_dota/text_info_vlm.json --captioner mllm \\
      --mllm-url http://localhost:8000/v1 --mllm-model Qwen/Qwen2-VL-7B-Instruct --mllm-rate 4
"""


def _add_mllm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MLLM captioner (any OpenAI-compatible chat endpoint: vLLM, SGLang, llama.cpp, ...)")
    g.add_argument("--captioner", choices=("template", "mllm"), default="template",
                   help="template (deterministic, default) or mllm")
    g.add_argument("--mllm-url", help="base URL, e.g. http://localhost:8000/v1 (POST {url}/chat/completions)")
    g.add_argument("--mllm-model", help="model name the server serves")
    g.add_argument("--mllm-api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key, if the server wants one (default %(default)s)")
    g.add_argument("--mllm-rate", type=float, default=2.0, help="requests per second, at most (default %(default)s;"
                   " 0: unlimited)")
    g.add_argument("--mllm-retries", type=int, default=5, help="retries per request (default %(default)s)")
    g.add_argument("--mllm-timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    g.add_argument("--mllm-workers", type=int, default=4, help="concurrent requests (default %(default)s)")
    g.add_argument("--mllm-cache", help="response cache folder (default: OUT/.farslip_build/mllm_cache)")


def _make_mllm(args, default_cache: Path):
    from ..dataprep.captions import MLLMCaptioner, OpenAIChatClient

    if args.captioner != "mllm":
        return None
    if not args.mllm_url or not args.mllm_model:
        raise UsageError("--captioner mllm needs --mllm-url and --mllm-model")
    client = OpenAIChatClient(args.mllm_url, args.mllm_model, api_key_env=args.mllm_api_key_env,
                              timeout=args.mllm_timeout, max_retries=args.mllm_retries,
                              rate=args.mllm_rate or None, cache_dir=args.mllm_cache or default_cache)
    return MLLMCaptioner(client)


def add_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="build, validate, describe and synthesise training data",
                                 description=DATA_HELP, formatter_class=_RAW)
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 1)[1])

    # ---- build
    b = sub.add_parser("build", help="detection dataset -> MGRS-format data",
                       description="Turn a detection dataset into MGRS-format data: OUT/text_info.json (a JSON list "
                                   "of records with global_filepath, captions and segment objects whose bbox holds "
                                   "x1, y1, x2, y2, W, H) and OUT/global_imgs/. global_filepath is relative to "
                                   "OUT/global_imgs/, as in the official MGRS-200k release (official training: "
                                   "--train-data OUT/text_info.json --root-train-img-dir OUT/global_imgs/).",
                       epilog=BUILD_EPILOG, formatter_class=_RAW)
    b.add_argument("--format", required=True, choices=("dota", "dior", "fair1m", "coco"), help="label format")
    b.add_argument("--images", required=True, help="image folder (searched recursively)")
    b.add_argument("--labels", required=True, help="label folder (dota: *.txt, dior/fair1m: *.xml) or file "
                   "(coco: the JSON)")
    b.add_argument("--out", required=True, help="output folder")
    g = b.add_argument_group("chips and objects")
    g.add_argument("--chip-size", type=int, default=800, help="chip side in px; 0: keep whole images "
                   "(default %(default)s)")
    g.add_argument("--overlap", type=int, default=200, help="minimum overlap of neighbouring chips in px "
                   "(default %(default)s)")
    g.add_argument("--min-visibility", type=float, default=0.7, help="keep an object in a chip when at least this "
                   "fraction of its area is inside (default %(default)s)")
    g.add_argument("--min-box-size", type=float, default=2.0, help="drop boxes thinner than this many px "
                   "(default %(default)s)")
    g.add_argument("--drop-difficult", action="store_true", help="drop objects flagged difficult (DOTA difficult=1,"
                   " VOC <difficult>1, COCO iscrowd/ignore)")
    g.add_argument("--keep-empty", action="store_true", help="also write chips with no objects")
    g.add_argument("--category-map", help="JSON {raw: plain} or text file 'raw,plain' per line overriding the "
                   "default name map; an empty plain name drops the category")
    g.add_argument("--no-default-map", action="store_true", help="use only generic cleaning and --category-map")
    g.add_argument("--categories", help="fixed category id table: JSON {name: id} or list, or a text file with one "
                   "name per line (use the categories.json of another build to share ids)")
    g = b.add_argument_group("output and execution")
    g.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="chip format (default %(default)s)")
    g.add_argument("--jpeg-quality", type=int, default=95, help="(default %(default)s)")
    g.add_argument("--workers", type=int, default=0, help="processes cutting images (default: 0 = in this process)")
    g.add_argument("--limit", type=int, help="only the first N source images (to try options out)")
    g.add_argument("--overwrite", action="store_true", help="discard an earlier build in OUT instead of resuming")
    g.add_argument("--strict", action="store_true", help="exit with status 1 when any problem was met")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_mllm_options(b)
    b.set_defaults(func=_cmd_build)

    # ---- validate
    v = sub.add_parser("validate", help="check training data (MGRS, shards, CSV) as the trainer reads it",
                       description="Check training data. MGRS JSON: structure, captions, boxes (six values in x1 "
                                   "y1 x2 y2 W H order, inside the image, non-degenerate), category ids consistent "
                                   "with names, and that every image exists, decodes and has the size its boxes "
                                   "claim. Webdataset shards: every tar readable to its end, every sample with an "
                                   "image that decodes and a non-empty UTF-8 caption, samples per shard. CSV: the "
                                   "columns, every row's caption, every image there and decoding.",
                       epilog=VALIDATE_EPILOG, formatter_class=_RAW)
    v.add_argument("path", help="text_info.json (or its folder), a shard spec or folder of shards, or a CSV")
    _add_kind_options(v)
    v.add_argument("--root", help="folder the image paths are relative to: MGRS global_filepath (as the official "
                   "--root-train-img-dir; default: the JSON's global_imgs/, then its folder) or the CSV's paths "
                   "(default: the CSV's folder)")
    v.add_argument("--no-images", action="store_true", help="check the JSON only")
    v.add_argument("--header-only", action="store_true", help="read image headers only, do not decode (faster)")
    v.add_argument("--workers", type=int, default=8, help="threads reading images (default %(default)s)")
    v.add_argument("--max-lines", type=int, default=50, help="findings printed (default %(default)s)")
    v.add_argument("--report", help="write all findings to this JSON file")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=_cmd_validate)

    # ---- stats
    s = sub.add_parser("stats", help="counts of training data (MGRS: tables and a chart; shards, CSV: tables)",
                       description="MGRS JSON: print images, objects per image, the category histogram and the "
                                   "box-size distribution, and write a PNG chart. Shards and CSVs: samples per "
                                   "shard (or rows and images), member keys, caption lengths, image sizes.",
                       epilog=STATS_EPILOG, formatter_class=_RAW)
    s.add_argument("path", help="text_info.json (or its folder), a shard spec or folder of shards, or a CSV")
    _add_kind_options(s)
    s.add_argument("--root", help="CSV: folder the image paths are relative to (default: the CSV's folder)")
    s.add_argument("--png", help="MGRS chart path (default: <json stem>_stats.png next to the JSON)")
    s.add_argument("--json", help="also write the statistics as JSON")
    s.add_argument("--top", type=int, default=40, help="categories listed (default %(default)s)")
    s.set_defaults(func=_cmd_stats)

    # ---- synth
    y = sub.add_parser("synth", help="a synthetic remote-sensing world in every format",
                       description="Write procedurally generated aerial-like scenes (8 scene classes, land cover "
                                   "with textures, objects with distinct shapes) as MGRS JSON, an RS5M-style "
                                   "webdataset shard, caption/classification/retrieval CSVs and an OVSS dataset.",
                       epilog=SYNTH_EPILOG, formatter_class=_RAW)
    y.add_argument("--out", required=True, help="output folder")
    y.add_argument("--n", type=int, default=512, help="training images (default %(default)s)")
    y.add_argument("--n-test", type=int, help="held-out images for cls/retrieval/ovss (default: max(24, n/4))")
    y.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    y.add_argument("--size", type=int, default=224, help="image side in px (default %(default)s)")
    y.add_argument("--shard-size", type=int, default=1000, help="samples per webdataset shard (default %(default)s)")
    y.add_argument("--mixed", type=float, default=0.0,
                   help="share of training and OVSS images that are two scenes side by side, captions naming both "
                        "without saying which side is which (default %(default)s; the quickstart uses 0.5)")
    y.add_argument("--overwrite", action="store_true", help="replace an earlier world in OUT")
    y.add_argument("--no-progress", action="store_true")
    y.set_defaults(func=_cmd_synth)

    # ---- caption
    c = sub.add_parser("caption", help="recompute the captions of an MGRS JSON",
                       description="Recompute brief, global and detailed captions of an MGRS JSON from its objects, "
                                   "with the template captioner or a multimodal LLM.",
                       epilog=CAPTION_EPILOG, formatter_class=_RAW)
    c.add_argument("path", help="text_info.json, or the folder holding it")
    c.add_argument("--out", help="write here instead of replacing the file")
    c.add_argument("--root", help="folder global_filepath is relative to, as the official --root-train-img-dir "
                   "(default: the JSON's global_imgs/, then the JSON's folder)")
    c.add_argument("--no-progress", action="store_true")
    _add_mllm_options(c)
    c.set_defaults(func=_cmd_caption)


def _add_kind_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("mgrs", "webdataset", "csv"), default=None,
                   help="the data's format (default: from the path)")
    p.add_argument("--image-key", default="filepath", help="CSV column of the image paths (default %(default)s; "
                   "the recipe's data.image_key)")
    p.add_argument("--caption-key", default="title", help="CSV column of the captions (default %(default)s; "
                   "data.caption_key)")
    p.add_argument("--sep", default=None, help="CSV separator (default: a tab for .tsv, else a comma; \\t for a "
                   "tab)")


def _csv_sep(args) -> str | None:
    from ..train.config import decode_escapes

    return decode_escapes(args.sep, "--sep") if args.sep else None


def _err(msg: str) -> int:
    print(f"farslip: error: {one_line(msg)}", file=sys.stderr)  # the form of every user error (cli.main)
    return 2


def _cmd_build(args) -> int:
    from ..dataprep.detection import LabelFileError
    from ..dataprep.mgrs import STATE_DIR, BuildConfig, BuildError, build_mgrs, format_summary

    cfg = BuildConfig(format=args.format, images=args.images, labels=args.labels, out=args.out,
                      chip_size=args.chip_size, overlap=args.overlap, min_visibility=args.min_visibility,
                      min_box_size=args.min_box_size, drop_difficult=args.drop_difficult,
                      keep_empty=args.keep_empty, image_format=args.image_format, jpeg_quality=args.jpeg_quality,
                      category_map=args.category_map, no_default_map=args.no_default_map,
                      categories=args.categories, captioner=args.captioner, limit=args.limit)
    try:
        mllm = _make_mllm(args, Path(args.out) / STATE_DIR / "mllm_cache")
        summary = build_mgrs(cfg, workers=args.workers, overwrite=args.overwrite, progress=not args.no_progress,
                             mllm=mllm, caption_workers=args.mllm_workers)
    except (BuildError, LabelFileError, FileNotFoundError, ValueError) as exc:
        return _err(str(exc))
    print(format_summary(summary))
    if args.strict and summary["problems"]:
        return 1
    return 0 if summary["images_written"] else 1


def _cmd_validate(args) -> int:
    from ..core.files import atomic_write, refuse_overwriting_inputs
    from ..data.inspection import detect_kind, validate_data

    kind = args.kind or detect_kind(args.path)
    if args.report:
        refuse_overwriting_inputs([args.report], _inputs(args.path, kind), hint="choose another --report")
    try:
        rep = validate_data(args.path, kind, root=args.root, image_key=args.image_key, caption_key=args.caption_key,
                            sep=_csv_sep(args), decode=not args.header_only, check_images=not args.no_images,
                            workers=args.workers, progress=not args.no_progress)
    except FileNotFoundError as exc:
        return _err(str(exc))
    print(rep.format(args.max_lines))
    if args.report:
        atomic_write(args.report, json.dumps(rep.to_dict(), indent=2) + "\n")
    if rep.records == 0 and rep.errors:
        return 2 if any("not valid JSON" in f.message for f in rep.errors) else 1
    return 0 if rep.ok else 1


def _cmd_stats(args) -> int:
    from ..core.files import atomic_write, refuse_overwriting_inputs
    from ..data.inspection import data_stats, detect_kind, format_data_stats
    from ..dataprep.stats import default_png_path, plot_stats

    kind = args.kind or detect_kind(args.path)
    if kind != "mgrs" and args.png:
        return _err("--png: charts are drawn for MGRS data; shards and CSVs get tables (and --json)")
    try:
        st = data_stats(args.path, kind, root=args.root, image_key=args.image_key, caption_key=args.caption_key,
                        sep=_csv_sep(args))
    except (FileNotFoundError, ValueError) as exc:
        return _err(str(exc))
    outputs = ([args.png or default_png_path(args.path)] if kind == "mgrs" else []) + ([args.json] if args.json else [])
    refuse_overwriting_inputs(outputs, _inputs(args.path, kind), hint="choose another --png / --json")
    print(format_data_stats(st, top=args.top))
    if kind == "mgrs":
        png = plot_stats(st, args.png or default_png_path(args.path), title=str(args.path))
        print(f"\nchart written to {png}")
    if args.json:
        slim = dict(st)
        if kind == "mgrs":
            slim["objects_per_image"] = {k: v for k, v in st["objects_per_image"].items() if k != "values"}
            slim["box_side"] = {k: v for k, v in st["box_side"].items() if k not in ("values", "relative_values")}
        atomic_write(args.json, json.dumps(slim, indent=2, default=str) + "\n")
    return 0


def _cmd_synth(args) -> int:
    from ..dataprep.synth import synth_world

    try:
        s = synth_world(args.out, n=args.n, seed=args.seed, size=args.size, n_test=args.n_test,
                        shard_size=args.shard_size, overwrite=args.overwrite, progress=not args.no_progress,
                        mixed=args.mixed)
    except (FileExistsError, ValueError) as exc:
        return _err(str(exc))
    print(f"synthetic world in {args.out}: {s['train_images']} training images ({s['objects']} objects), "
          f"{s['test_images']} held-out images, {len(s['scenes'])} scene classes, seed {s['seed']}; see world.json")
    return 0


def _cmd_caption(args) -> int:
    from ..dataprep.mgrs import STATE_DIR, BuildError, recaption_mgrs
    from ..dataprep.validate import resolve_mgrs_path

    if args.out and Path(args.out).suffix.lower() != ".json":
        return _err(f"--out {args.out}: captions are written as an MGRS JSON; give a .json file name")
    try:
        src = resolve_mgrs_path(args.path)
        mllm = _make_mllm(args, src.parent / STATE_DIR / "mllm_cache")
        res = recaption_mgrs(src, out=args.out, mllm=mllm, root=args.root, workers=args.mllm_workers,
                             progress=not args.no_progress)
    except (BuildError, FileNotFoundError, ValueError) as exc:
        return _err(str(exc))
    print(f"captioned {res['records']} records into {res['json']}"
          + (f"; {res['caption_failed']} fell back to template captions" if res["caption_failed"] else ""))
    for key, msg in res["failures"][:10]:
        print(f"  caption-failed: {key}: {msg}")
    return 0


def _inputs(path: str, kind: str) -> list[Path]:
    """The files a validate/stats run reads, to keep its outputs off them."""
    from ..data.inspection import shard_list
    from ..dataprep.validate import resolve_mgrs_path

    if kind == "mgrs":
        return _existing_json(path, resolve_mgrs_path)
    if kind == "csv":
        return [Path(path)] if Path(path).is_file() else []
    try:
        return [Path(p) for p in shard_list(path)]
    except (FileNotFoundError, ValueError):
        return []


def _existing_json(path: str, resolve) -> list[Path]:
    """The MGRS JSON a command reads (to keep its outputs off it); none when it cannot be found (the command
    itself then says so)."""
    try:
        return [resolve(path)]
    except (FileNotFoundError, ValueError):
        return []
