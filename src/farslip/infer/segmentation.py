"""``farslip segment``: open-vocabulary land-cover maps of rasters of any size, GeoTIFF in, GeoTIFF out.

The raster is processed tile by tile (``tiling.py``: each tile encodes the windows of the whole raster's grid that
touch it, so the map equals one pass over the whole raster); inside a tile the OVSS protocol of the evaluation
(dense features in sliding windows, 80-template text embeddings, synonym max, CLS-bias, threshold -> background)
runs at the model's own window size. Memory is bounded by the tile size, not the raster size.

Defaults are raster-friendly (windows of the model's input size, stride half of it, CLS-bias -0.3, no threshold,
the raster at its own resolution). ``protocol="farslip"`` or ``"segearth"`` takes an evaluation protocol's
window, stride, attention, CLS-bias, temperature, window resize, SimFeatUp and float16 model instead; its
threshold too where it has one number (``segearth``'s are per dataset, so the option's stays), and its
normalisation of the pixels. The raster is never fitted to 448 px: ``scale`` stays a resampling factor, and the
resampling is the protocols' own (OpenCV's bilinear resize of the whole raster, evaluated tile by tile: see
``scene.py``) unless ``resampling="gdal-bilinear"`` asks for GDAL's; so a protocol's map of an image is the map
``farslip eval`` computes for it at the same scale.

``protocol="segearth-ov3"`` runs SAM 3 instead (``checkpoint`` = SAM 3's weights; ``infer/sam3.py``): windows of
512 px every 512 (OpenEarthMap's config) unless given, each through SAM 3 at its own resolution, a class's map its
best name's, no threshold unless given; the fusions (``sam3-clip-*``) add the CLIP of ``clip_checkpoint``.
"""
from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from rasterio.errors import RasterioIOError

from ..core.errors import UsageError
from ..core.files import StagedFiles, atomic_path, atomic_write, distinct_stems, refuse_overwriting_inputs
from ..core.memory import trim
from ..engine import OVSS_TEMPLATES, class_scores, model_input_size, name_embeddings, predict_classes, query_table
from ..engine.colours import class_colours
from ..engine.images import protocol_normalise
from ..engine.protocols import OVSSProtocol, Sam3Protocol, get_protocol, is_sam3
from ..engine.runtime import ProtocolRuntime, protocol_runtime
from ..models import weights_fingerprint
from .cog import class_map_writer, score_writer
from .common import PNG_METADATA, PixelProgress, load_for_inference, parse_classes
from .inputs import expand_inputs, listing_files
from .raster import RasterError, crs_name, open_dataset, open_raster, read_thumbnail
from .runner import Done, Log, Run, checkpoint_identity, format_pixels, run_inputs
from .scene import SceneTiles, Tile, bounded_gdal_cache, check_resampling, tile_logits
from .vectors import driver_for, vectorize_class_map

NODATA = 255

#: The protocols segment takes.
PROTOCOL_NAMES = ("farslip", "segearth", "segearth-ov3", "sam3-clip-rescore", "sam3-clip-fuse", "sam3-clip-presence")


#: What ``segment`` does where neither the caller nor a protocol says: raster-friendly settings (windows of the
#: model's input size, SegEarth-OV's CLS-bias, no threshold, no window resize).
RASTER_DEFAULTS = dict(attn="segearth", cls_lambda=-0.3, cls_from="surgery", logit_scale=50.0, threshold=0.0,
                       background_index=0, window_to_model_size=False, simfeatup=None, half_model="never")

#: Options that only mean something for a CLIP (refused with a SAM 3 protocol), and the reverse, as the CLI
#: spells them.
CLIP_OPTIONS = {"attn": "--attn", "cls_lambda": "--cls-lambda", "cls_from": "--cls-from", "logit_scale":
                "--logit-scale", "window_to_model_size": "--window-resize", "simfeatup": "--simfeatup",
                "half_model": "--half-model"}
SAM3_OPTIONS = {"confidence_threshold": "--confidence-threshold", "instances": "--no-instances",
                "semantic": "--no-semantic", "presence": "--no-presence", "sam3_autocast": "--sam3-autocast", "clip_weight": "--clip-weight",
                "clip_protocol": "--clip-protocol"}


@dataclass
class SegmentOptions:
    """How to segment. The protocol settings (``attn`` .. ``half_model``, ``window``, ``stride``) are None until
    :meth:`resolved` fills them: a value given wins, then ``protocol``'s, then :data:`RASTER_DEFAULTS` (window:
    the model's input size, stride: half the window, chosen when the model is known)."""
    protocol: str | None = None         # an OVSS protocol's settings (farslip, segearth) instead of the defaults;
                                        # a SAM 3 protocol (segearth-ov3, sam3-clip-*) runs SAM 3
    attn: str | None = None
    cls_lambda: float | None = None
    cls_from: str | None = None
    logit_scale: float | None = None
    threshold: float | None = None      # best class probability under this -> background class
    background_index: int | None = None
    window_to_model_size: bool | None = None
    simfeatup: str | None = None
    half_model: str | None = None
    window: int | None = None           # sliding-window size
    stride: int | None = None           # window step
    scale: float = 1.0                  # resample the raster by this factor before the windows (e.g. to match GSD)
    resampling: str = "opencv-linear"   # how: the protocols' OpenCV bilinear, or "gdal-bilinear" (GDAL's, in the read)
    block: int = 1024                   # output pixels per tile side (rounded to whole window strides)
    window_batch_size: int | None = None  # default: 64 on a GPU, about 1024 token rows on the CPU
    bands: Sequence[int] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    preview_size: int = 1024
    progress: bool = True
    gdal_cache_mb: int = 256            # GDAL block cache; its default (5% of RAM) is what grows on huge rasters
    amp: str | None = None              # None: fp16 autocast on CUDA, fp32 on CPU; "bf16": ~3x on bf16 CPUs; "off"
    confidence: bool = True             # OUT/<stem>.confidence.tif: the shown class's probability
    probabilities: bool = False         # OUT/<stem>.probabilities.tif: every class's probability, a band each
    vector: str | None = None           # "gpkg" | "geojson" -> OUT/<stem>.<format>; or a .gpkg/.geojson path
    min_area: float = 0.0               # polygons: regions under this many CRS units^2 (m^2, deg^2, px^2) are left out
    simplify: float = 0.0               # polygons: simplification tolerance in the CRS's units
    html: bool = False                  # OUT/<stem>.html: the offline interactive map
    # SAM 3 protocols (None: the protocol's)
    confidence_threshold: float | None = None  # objects kept when sigmoid(logit) x presence exceeds it (0.5)
    instances: bool | None = None       # the instance masks x object scores
    semantic: bool | None = None        # the semantic head
    presence: bool | None = None        # x the presence score
    sam3_autocast: str | None = None    # bf16 autocast: cuda (default), always, never
    clip_weight: float | None = None    # the fusions: the CLIP's weight
    clip_protocol: str | None = None    # the fusions: the CLIP protocol's dense settings (segearth)

    @property
    def runs_sam3(self) -> bool:
        return bool(self.protocol) and is_sam3(self.protocol)

    def sam3_protocol(self) -> Sam3Protocol:
        """The SAM 3 protocol with the options given (a CLIP-only option is refused)."""
        given = [flag for k, flag in CLIP_OPTIONS.items() if getattr(self, k) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: CLIP option(s); protocol {self.protocol} runs SAM 3 (its options: "
                             f"{', '.join(sorted(set(SAM3_OPTIONS.values())))}, --window, --stride, --threshold)")
        return get_protocol(self.protocol, dict(
            crop=self.window, stride=self.stride, confidence=self.confidence_threshold, instances=self.instances,
            semantic=self.semantic, presence=self.presence, autocast=self.sam3_autocast,
            clip_weight=self.clip_weight, clip_protocol=self.clip_protocol, threshold=self.threshold,
            background_index=self.background_index))

    def resolved(self) -> "SegmentOptions":
        """A copy with every protocol setting decided (the one place where options are resolved)."""
        if self.protocol and self.protocol.lower() not in PROTOCOL_NAMES:
            raise UsageError(f"--protocol {self.protocol}: one of {', '.join(PROTOCOL_NAMES)}")
        if self.runs_sam3:
            try:
                rule = self.sam3_protocol().raster_rule()
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            chosen = dict(window=rule.crop, stride=rule.stride, threshold=rule.threshold,
                          background_index=rule.background_index)
            return replace(self, **{k: v for k, v in chosen.items() if getattr(self, k) is None})
        given = [flag for k, flag in SAM3_OPTIONS.items() if getattr(self, k) is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: SAM 3 option(s); they need --protocol segearth-ov3 or sam3-clip-*")
        chosen = dict(RASTER_DEFAULTS)
        if self.protocol:
            proto = get_protocol(self.protocol)
            chosen.update(attn=proto.attn, cls_lambda=proto.cls_lambda, cls_from=proto.cls_from,
                          logit_scale=proto.logit_scale, window=proto.crop, stride=proto.stride,
                          window_to_model_size=proto.window_to_model_size, simfeatup=proto.simfeatup,
                          half_model=proto.half_model)
            # segearth's thresholds are per dataset: a raster keeps the default unless one is given
            chosen.update({k: getattr(proto, k) for k in ("threshold", "background_index")
                           if getattr(proto, k) is not None})
        given = {k: v for k, v in chosen.items() if getattr(self, k) is None}
        return replace(self, **given)

    def as_protocol(self, window: int, stride: int) -> OVSSProtocol:
        """These (resolved) options as a protocol, for the engine (scale and the threshold are applied by segment
        itself)."""
        return OVSSProtocol(self.protocol or "segment", scale=None, crop=window, stride=stride, attn=self.attn,
                            cls_lambda=self.cls_lambda, cls_from=self.cls_from, logit_scale=self.logit_scale,
                            window_to_model_size=self.window_to_model_size, simfeatup=self.simfeatup,
                            half_model=self.half_model)


@dataclass
class SegmentResult:
    image: str
    geotiff: str
    preview: str
    classes: list[str]
    pixels: int
    seconds: float
    class_fractions: dict[str, float] = field(default_factory=dict)
    confidence: str | None = None
    probabilities: str | None = None
    vectors: str | None = None
    html: str | None = None
    crs: str | None = None              # the input's (and the outputs') CRS; None: a picture, mapped in pixels

    def outputs(self) -> list[str]:
        """Every file written for this input (the completion record checks they are still there)."""
        files = [self.geotiff, self.preview, self.confidence, self.probabilities, self.vectors, self.html,
                 str(Path(self.geotiff).with_suffix(".json"))]
        return [f for f in files if f]


def segment(inputs: Sequence[str | Path] | str | Path, classes: Sequence[str] | None = None, *,
            checkpoint: str | Path | None = None, model=None, tokenizer=None, classes_file: str | Path | None = None,
            out: str | Path = "segmentations", arch: str | None = None, device: str = "auto",
            options: SegmentOptions | None = None, redo: bool = False, inputs_from: str | Path | None = None,
            stac_asset: str | None = None, log: Log | None = print, engine: str = "local",
            address: str | None = None, actors: int | None = None, clip_checkpoint: str | Path | None = None,
            clip_model=None, clip_tokenizer=None, **overrides) -> Run:
    """Segment each input into ``classes`` (``"building,roof"`` = one class with synonyms); per input, write the
    COGs ``OUT/<stem>.tif`` (class indexes, input georeference kept, 255 = nodata) and ``OUT/<stem>.confidence.tif``,
    ``OUT/<stem>.png`` (preview), ``OUT/<stem>.json`` and as asked the per-class probabilities, polygons and an
    HTML map.

    ``inputs``: paths, glob patterns, ``@list.txt`` files and STAC ItemCollections (and ``inputs_from``, a list
    file); inputs sharing a file name get distinct stems (``a/x.tif``, ``b/x.tif`` -> ``a_x``, ``b_x``). Options
    come from ``options`` and the keyword ``overrides`` (any :class:`SegmentOptions` field, e.g.
    ``protocol="segearth", threshold=0.2``). Inputs already complete in ``out`` are skipped unless ``redo``; under
    torchrun the inputs are dealt to the processes; with ``engine="ray"`` they go to the model actors of a Ray
    cluster (``address``, default ``RAY_ADDRESS`` or a Ray started here; ``actors``, default one per GPU or CPU;
    the model from ``checkpoint``), see :mod:`farslip.infer.ray_engine`. Returns the
    :class:`~farslip.infer.runner.Run`: the results of the inputs segmented now (``run[0].geotiff``) and every
    input's outcome.

    With a SAM 3 protocol (``protocol="segearth-ov3"``, ``"sam3-clip-*"``), ``checkpoint`` (or ``model``, a loaded
    ``Sam3Model``) is SAM 3's weights, and the fusions' CLIP is ``clip_checkpoint`` (or ``clip_model`` +
    ``clip_tokenizer``)."""
    opts = _options(options, overrides)
    entries = [inputs] if isinstance(inputs, (str, Path)) else inputs
    paths = expand_inputs(entries, inputs_from=inputs_from, stac_asset=stac_asset)
    stems = distinct_stems(paths)
    job = SegmentJob(parse_classes(classes, classes_file), opts, Path(out), checkpoint, arch, model, tokenizer,
                     clip_checkpoint=clip_checkpoint, clip_model=clip_model, clip_tokenizer=clip_tokenizer)
    job.check(paths, stems, [p for p in (classes_file, checkpoint, clip_checkpoint) if p and Path(p).is_file()]
              + listing_files(entries, inputs_from))
    return run_inputs(job, paths, stems, device=device, redo=redo, log=log, engine=engine, address=address,
                      actors=actors)


def _options(options: SegmentOptions | None, overrides: dict) -> SegmentOptions:
    known = {f.name for f in fields(SegmentOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown segment option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return replace(options or SegmentOptions(), **overrides).resolved()


@dataclass
class SegmentWorker:
    """What a process builds once to segment many rasters: the model under the protocol, the class embeddings."""
    runtime: ProtocolRuntime
    text: torch.Tensor
    query_to_class: torch.Tensor
    num_classes: int
    options: SegmentOptions

    def tile_scores(self, scene: SceneTiles, tile: Tile, on_batch=None) -> torch.Tensor | None:
        """``[C, h, w]`` class probabilities of the tile's output pixels (None: no valid pixel there);
        ``on_batch(share)`` as the tile's windows are encoded."""
        opts = self.options
        window = self.runtime.window_options(opts.as_protocol(scene.window, scene.stride))
        del window["crop"], window["stride"]  # the scene's windows
        normalise = protocol_normalise if opts.protocol else None  # the raster defaults: the model's own mean/std
        logits = tile_logits(scene, tile, self.runtime.model, self.text, amp=opts.amp,
                             window_batch_size=opts.window_batch_size, normalise=normalise, on_batch=on_batch,
                             **window)
        if logits is None:
            return None
        trim()  # the windows' buffers are freed: hand their pages back before the next tile
        return class_scores(logits, self.query_to_class, self.num_classes, logit_scale=opts.logit_scale)

    def window(self) -> int:
        return self.options.window or model_input_size(self.runtime.model)


@dataclass
class SegmentJob:
    """One ``segment`` run, everything but the model's weights: picklable, so any engine can run it."""
    classes: list[list[str]]            # synonyms of each class
    options: SegmentOptions             # resolved
    out: Path
    checkpoint: str | Path | None = None
    arch: str | None = None
    model: object = None                # a caller's model (with its tokenizer) instead of a checkpoint
    tokenizer: object = None
    several: bool = False               # more than one input: a --vector PATH gets each input's stem
    command: str = "segment"
    clip_checkpoint: str | Path | None = None  # the SAM 3 fusions' CLIP (or clip_model + clip_tokenizer)
    clip_model: object = None
    clip_tokenizer: object = None

    @property
    def names(self) -> list[str]:
        return [c[0] for c in self.classes]

    def check(self, paths: Sequence[Path], stems: Sequence[str], extra_inputs: Sequence) -> None:
        """Everything that can be refused before any work: the class list, ``out``, outputs over inputs."""
        opts, n = self.options, len(self.classes)
        if n < 2:
            raise UsageError(f"one class ({self.names[0]!r}): every pixel would be it; name at least two (the "
                             f"other things in the scene, or \"background\"), or find one thing with `farslip "
                             f"locate {self.names[0]!r} IMAGE`")
        if not 0 <= opts.background_index < n:
            raise UsageError(f"--background-index {opts.background_index} is outside the {n} classes")
        if n >= NODATA:
            raise UsageError(f"{n} classes: a class map holds at most {NODATA} ({NODATA} marks nodata)")
        check_resampling(opts.resampling)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out}: is a file; segment writes a folder of outputs per image")
        if opts.runs_sam3:
            from ..engine.sam3 import check_prompt_lengths
            from ..models.sam3 import require_transformers, sam3_tokenizer
            from .sam3 import check_sam3_models

            require_transformers()
            check_sam3_models(opts.sam3_protocol(), "segment", self.checkpoint, self.model, self.clip_checkpoint,
                              self.clip_model)
            check_prompt_lengths(sam3_tokenizer(), query_table(self.classes)[0])
        elif self.clip_checkpoint is not None or self.clip_model is not None:
            raise UsageError("--clip-checkpoint is for the SAM 3 fusions (--protocol sam3-clip-*); with a CLIP "
                             "protocol --checkpoint names the CLIP")
        elif self.model is None and self.checkpoint is None:
            raise UsageError("segment needs a checkpoint (or a model and its tokenizer)")
        self.several = len(paths) > 1
        refuse_overwriting_inputs([p for stem in stems for p in self.outputs(stem)], list(paths) + list(extra_inputs))

    def outputs(self, stem: str) -> list[Path]:
        """Every file segment writes for one input."""
        opts = self.options
        kinds = ["tif", "png", "json"] + ["confidence.tif"] * opts.confidence \
            + ["probabilities.tif"] * opts.probabilities + ["html"] * opts.html
        return [self.out / f"{stem}.{k}" for k in kinds] + ([self.vector_path(stem)] if opts.vector else [])

    def vector_path(self, stem: str) -> Path:
        return vector_path(self.options.vector, stem, self.out, self.several)

    def settings(self) -> dict:
        values = {k: v for k, v in asdict(self.options).items() if k != "progress"}
        model = checkpoint_identity(self.checkpoint) if self.model is None else weights_fingerprint(self.model)
        clip = checkpoint_identity(self.clip_checkpoint) if self.clip_model is None else \
            weights_fingerprint(self.clip_model)
        return {**values, "command": self.command, "classes": self.classes, "checkpoint": model, "arch": self.arch,
                **({"clip_checkpoint": clip} if self.options.runs_sam3 else {})}

    def load(self, device: str):
        if self.options.runs_sam3:
            from .sam3 import sam3_worker

            names, owner = query_table(self.classes)
            return sam3_worker(self.options.sam3_protocol(), names, owner, len(self.classes),
                               checkpoint=self.checkpoint, model=self.model, clip_checkpoint=self.clip_checkpoint,
                               clip_model=self.clip_model, clip_tokenizer=self.clip_tokenizer, arch=self.arch,
                               device=device, amp=self.options.amp, window_batch_size=self.options.window_batch_size)
        model, tokenizer = self.model, self.tokenizer
        if model is None:
            model, _, tokenizer = load_for_inference(self.arch, self.checkpoint, device=device)
        queries, query_to_class = query_table(self.classes)
        window = self.options.window or model_input_size(model)
        runtime = protocol_runtime(model, self.options.as_protocol(window, self.options.stride or window // 2),
                                   self.options.amp)
        with torch.no_grad():
            # once per process, in fp32 whatever amp; 64 prompts a batch keeps the text tower's activations (~0.6 GB
            # at 256 for ViT-B) under the peak the tiles reach
            text = name_embeddings(runtime.model, tokenizer, queries, OVSS_TEMPLATES, batch_size=64,
                                   progress=self.options.progress)
        return SegmentWorker(runtime, text, query_to_class, len(self.classes), self.options)

    def one(self, worker, path: Path, stem: str) -> Done:
        vector = self.vector_path(stem) if self.options.vector else None
        with bounded_gdal_cache(self.options.gdal_cache_mb):
            result = _segment_one(path, stem, worker, self.names, self.out, vector, self.options)
        return Done(result, result.outputs(), result.pixels)

    def recall(self, path: Path, stem: str) -> SegmentResult | None:
        """The result of an input completed earlier, from ``OUT/<stem>.json``."""
        return _read_result(self.out / f"{stem}.json", SegmentResult)

    def describe(self, r: SegmentResult) -> list[str]:
        """The lines printed for one input done."""
        mp = r.pixels / max(r.seconds, 1e-9) / 1e6
        top = sorted(r.class_fractions.items(), key=lambda kv: -kv[1])[:5]
        where = "" if r.crs else "; no CRS in the input: outputs in pixel coordinates"
        return [f"{r.image} -> {r.geotiff} ({format_pixels(r.pixels)}, {mp:.3g} Mpx/s); preview {r.preview}{where}",
                "   " + ", ".join(f"{n} {100 * f:.1f}%" for n, f in top)]


def _segment_one(path: Path, stem: str, worker, names, out: Path, vector: Path | None,
                 opts: SegmentOptions) -> SegmentResult:
    """One input's outputs, finished together (:class:`~farslip.core.files.StagedFiles`): a failure in any phase --
    tiles, preview, polygons, web page -- leaves none of this run's files, and an earlier run's untouched.
    ``worker`` (a CLIP :class:`SegmentWorker` or a SAM 3 worker) gives each tile's class scores."""
    with StagedFiles() as stage:
        return _segment_staged(path, stem, worker, names, out, vector, opts, stage)


def _segment_staged(path: Path, stem: str, worker, names, out: Path, vector: Path | None, opts: SegmentOptions,
                    stage: StagedFiles) -> SegmentResult:
    t0 = time.perf_counter()
    r = open_raster(path, opts.bands, opts.percentiles)  # a nonsense georeference stops here: nothing written
    window = worker.window()
    scene = SceneTiles(r, window, opts.stride or window // 2, opts.scale, opts.block, opts.resampling)
    tags = {"FARSLIP_PROTOCOL": opts.protocol or "none", **scene.tags()}
    colours = class_colours(names)
    tif = out / f"{stem}.tif"
    conf_tif = out / f"{stem}.confidence.tif" if opts.confidence else None
    prob_tif = out / f"{stem}.probabilities.tif" if opts.probabilities else None
    counts = np.zeros(len(names), np.int64)
    try:
        with ExitStack() as stack:
            dst = stack.enter_context(class_map_writer(stage(tif), r.src, names, colours, NODATA, source=path))
            conf = stack.enter_context(score_writer(stage(conf_tif), r.src, ["confidence"], kind="confidence",
                                                    source=path, class_names=names)) if conf_tif else None
            probs = stack.enter_context(score_writer(stage(prob_tif), r.src, names, kind="probability",
                                                     source=path)) if prob_tif else None
            for written in (dst, conf, probs):
                if written is not None:
                    written.update_tags(**tags)
            tiles = PixelProgress(scene, r.height * r.width, f"segment {path.name}", opts.progress)
            for tile in tiles:
                scores = worker.tile_scores(scene, tile, on_batch=tiles.windows_done)
                if scores is None:
                    continue  # no valid pixel: the rasters keep their nodata there
                pred = predict_classes(scores, opts.threshold, opts.background_index)
                valid = scene.valid(tile)
                pred = pred.cpu().numpy().astype(np.uint8)
                if valid is not None:
                    pred[~valid] = NODATA
                win = tile.window
                dst.write(pred, 1, window=win)
                counts += np.bincount(pred[pred != NODATA].ravel(), minlength=len(names))[:len(names)]
                if conf is not None:
                    c = scores.gather(0, torch.from_numpy(np.minimum(pred, len(names) - 1)).long()
                                      .to(scores.device)[None])[0].float().cpu().numpy()
                    conf.write(_masked(c, valid), 1, window=win)
                if probs is not None:
                    probs.write(_masked(scores.float().cpu().numpy(), valid), window=win)
        preview = out / f"{stem}.png"
        write_preview(stage(tif), r, names, colours, stage(preview), opts.preview_size)
    except RasterioIOError as exc:  # a block that cannot be decoded (cut-off file), or a full disk
        raise RasterError(f"{path}: a block could not be read (truncated or corrupt file?) or {out} could not be "
                          f"written ({exc}); its outputs were not written") from None
    finally:
        r.close()
    if vector:
        vectorize_class_map(stage(tif), stage(vector), confidence=stage(conf_tif) if conf_tif else None,
                            min_area=opts.min_area, simplify=opts.simplify, progress=opts.progress)
    vectors = str(vector) if vector else None
    total = max(1, int(counts.sum()))
    fractions = {n: round(float(c) / total, 4) for n, c in zip(names, counts)}
    result = SegmentResult(str(path), str(tif), str(preview), names, r.height * r.width,
                           time.perf_counter() - t0, fractions, str(conf_tif) if conf_tif else None,
                           str(prob_tif) if prob_tif else None, vectors, crs=crs_name(r.src.crs))
    if opts.html:
        from .webmap import write_html

        write_html(stage(out / f"{stem}.html"), image=path, bands=opts.bands,
                   rasters=[stage(tif)] + ([stage(conf_tif)] if conf_tif else []),
                   vectors=[stage(vector)] if vector else [], progress=opts.progress)
        result.html = str(out / f"{stem}.html")
    atomic_write(stage(out / f"{stem}.json"), json.dumps(asdict(result), indent=2))
    return result


def _read_result(path: Path, kind):
    """A result dataclass from the JSON summary written beside the outputs (None when it cannot be read)."""
    try:
        return kind(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _masked(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """float32 scores with NaN (the score rasters' nodata) where the input has no data."""
    values = values.astype(np.float32, copy=False)
    if valid is not None:
        values[..., ~valid] = np.nan
    return values


def vector_path(spec: str, stem: str, out: Path, several: bool) -> Path:
    """Where ``--vector SPEC`` puts an image's polygons: ``gpkg``/``geojson`` -> ``OUT/<stem>.<format>``; a path
    as given (``PATH.<stem>.<suffix>`` when there are several images)."""
    if spec.lower() in ("gpkg", "geojson"):
        return out / f"{stem}.{spec.lower()}"
    p = Path(spec)
    driver_for(p)
    return p.with_name(f"{p.stem}.{stem}{p.suffix}") if several else p


def write_preview(tif: Path, r, names, colours, png: Path, max_side: int) -> Path:
    """Image | colour-mapped prediction with a legend, from decimated reads (bounded memory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from rasterio.enums import Resampling

    thumb = read_thumbnail(r, max_side).transpose(1, 2, 0)
    with open_dataset(tif) as src:
        pred = src.read(1, out_shape=thumb.shape[:2], resampling=Resampling.nearest)
    rgba = np.zeros(pred.shape + (4,), np.uint8)
    known = pred != NODATA
    rgba[known, :3] = colours[pred[known]]
    rgba[known, 3] = 255
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * thumb.shape[0] / max(thumb.shape[1], 1) + 1))
    axes[0].imshow(thumb)
    axes[0].set_title(r.path.name)
    axes[1].imshow(thumb)
    axes[1].imshow(rgba, alpha=0.75)
    axes[1].set_title("prediction")
    for ax in axes:
        ax.axis("off")
    fig.legend(handles=[Patch(color=colours[i] / 255, label=n) for i, n in enumerate(names)],
               loc="lower center", ncol=min(len(names), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)
    return png
