"""``farslip locate``: where in a whole scene is each thing you name -- a heatmap per query and its regions.

    run = farslip.locate(["storage tank", "ship"], "scene.tif", checkpoint="model.pt", out="where/")

The raster goes through exactly the tiles and windows of ``segment`` (``scene.py``); per pixel the window-averaged
cosine logits of each query's names and of a background vocabulary give the query's probability against the
background, ``sigmoid(s * l_query - logsumexp(s * l_background))`` with SegEarth-OV's logit scale ``s = 50`` --
the probability the segmentation protocol would give the query in a two-way "query or background" problem.
Queries do not compete with each other (a storage tank on a ship's deck may score high for both); synonyms
(``"storage tank,oil tank"``) score by their best name, as in ``segment``.

With a SAM 3 protocol (``protocol="segearth-ov3"``; ``checkpoint`` = SAM 3's weights) a query's heatmap is
SegEarth-OV3's map of its best name -- the kept objects' masks x their scores, max-fused with the semantic head, x
the presence score, averaged over the windows: SAM 3 decides "is this a <query>" for each prompt on its own, so no
background vocabulary competes (the fusions ``sam3-clip-*`` give the CLIP the background names to classify
against).

Per image and query: ``OUT/<stem>.<query>.tif`` (float32 COG, the input's CRS/transform, NaN = nodata); per image:
``OUT/<stem>.regions.gpkg`` (connected areas at or above ``threshold``: query, mean and maximum score, area),
``OUT/<stem>.locate.png`` (the image with each heatmap), ``OUT/<stem>.locate.json`` (summary) and, with ``html``,
``OUT/<stem>.locate.html`` (the offline map).
"""
from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.files import StagedFiles, atomic_path, atomic_write, distinct_stems, refuse_overwriting_inputs
from ..core.memory import trim
from ..engine import OVSS_TEMPLATES, model_input_size, name_embeddings, query_table
from ..models import drop_text_tower, weights_fingerprint
from .cog import score_writer
from .common import PNG_METADATA, PixelProgress, load_for_inference, parse_classes
from .inputs import expand_inputs, listing_files
from .raster import crs_name, open_dataset, open_raster, read_thumbnail
from .runner import Done, Log, Run, checkpoint_identity, format_pixels, run_inputs
from .scene import SceneTiles, bounded_gdal_cache, check_resampling, tile_logits
from .vectors import REGION_FIELDS, Features, area_unit, driver_for, heatmap_polygons, write_features

#: What a query competes with at each pixel (a query's own names are left out of it).
BACKGROUND = ("background", "bare land", "grass", "tree", "road", "building", "water", "farmland")


@dataclass
class LocateOptions:
    threshold: float = 0.5              # probability at or above which a pixel belongs to a detected region
    background: Sequence[str] = BACKGROUND
    min_area: float = 0.0               # regions smaller than this (CRS units^2: m^2, deg^2, px^2) are left out
    simplify: float = 0.0               # polygon simplification tolerance (the CRS's units)
    vector_format: str = "gpkg"         # gpkg | geojson
    attn: str = "segearth"
    cls_lambda: float = -0.3
    logit_scale: float = 50.0
    scale: float = 1.0
    resampling: str = "opencv-linear"   # or "gdal-bilinear" (see segment's option)
    window: int | None = None
    stride: int | None = None
    block: int = 1024
    window_batch_size: int | None = None
    bands: Sequence[int] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    preview_size: int = 1024
    progress: bool = True
    gdal_cache_mb: int = 128            # two float32 heatmaps and the image share it (segment: 256)
    amp: str | None = None
    html: bool = False                  # OUT/<stem>.locate.html: the offline interactive map
    protocol: str | None = None         # a SAM 3 protocol (segearth-ov3, sam3-clip-*): SAM 3 instead of the CLIP
    confidence_threshold: float | None = None  # SAM 3: objects kept above it (None: the protocol's, 0.5)
    instances: bool | None = None       # SAM 3's switches (None: the protocol's)
    semantic: bool | None = None
    presence: bool | None = None
    sam3_autocast: str | None = None
    clip_weight: float | None = None    # the fusions: the CLIP's weight

    def sam3_protocol(self):
        """The SAM 3 protocol with the options given; None when locate runs the CLIP."""
        from ..engine.protocols import get_protocol, is_sam3

        if not self.protocol:
            return None
        if not is_sam3(self.protocol):
            raise UsageError(f"--protocol {self.protocol}: locate takes a SAM 3 protocol (segearth-ov3, "
                             "sam3-clip-rescore, sam3-clip-fuse, sam3-clip-presence); its CLIP settings are "
                             "--window/--stride")
        try:
            return get_protocol(self.protocol, dict(
                crop=self.window, stride=self.stride, confidence=self.confidence_threshold, instances=self.instances,
                semantic=self.semantic, presence=self.presence, autocast=self.sam3_autocast,
                clip_weight=self.clip_weight))
        except ValueError as exc:
            raise UsageError(str(exc)) from None


@dataclass
class QueryResult:
    query: str
    heatmap: str
    max_score: float
    regions: int
    area: float                         # of the detected regions, in area_unit


@dataclass
class LocateResult:
    image: str
    regions: str
    preview: str
    pixels: int
    seconds: float
    queries: list[QueryResult] = field(default_factory=list)
    html: str | None = None
    crs: str | None = None              # the input's (and the outputs') CRS; None: a picture, mapped in pixels
    area_unit: str = "px^2"             # the CRS's: m^2, deg^2, ft^2; px^2 without a CRS


def slug(text: str) -> str:
    """A file-name part for a query ("storage tank,oil tank" -> "storage-tank")."""
    return re.sub(r"[^a-z0-9]+", "-", text.split(",")[0].lower()).strip("-") or "query"


def locate(queries: Sequence[str] | str, inputs: Sequence[str | Path] | str | Path, *,
           checkpoint: str | Path | None = None, model=None, tokenizer=None, out: str | Path = "locate",
           arch: str | None = None, device: str = "auto", options: LocateOptions | None = None, redo: bool = False,
           inputs_from: str | Path | None = None, stac_asset: str | None = None, log: Log | None = print,
           engine: str = "local", address: str | None = None, actors: int | None = None,
           clip_checkpoint: str | Path | None = None, clip_model=None, clip_tokenizer=None, **overrides) -> Run:
    """Heatmaps and regions of each query in each input (see the module's description). ``inputs``, ``redo``,
    torchrun, ``engine="ray"`` and the returned :class:`~farslip.infer.runner.Run` are as in
    :func:`~farslip.infer.segment`; ``overrides`` are :class:`LocateOptions` fields. With a SAM 3 protocol
    ``checkpoint`` (or ``model``) is SAM 3, and the fusions' CLIP ``clip_checkpoint`` (or ``clip_model`` +
    ``clip_tokenizer``)."""
    known = {f.name for f in fields(LocateOptions)}
    if set(overrides) - known:
        raise UsageError(f"unknown locate option(s) {', '.join(sorted(set(overrides) - known))}; known: "
                         f"{', '.join(sorted(known))}")
    opts = replace(options or LocateOptions(), **overrides)
    queries = [queries] if isinstance(queries, str) else list(queries)
    entries = [inputs] if isinstance(inputs, (str, Path)) else inputs
    paths = expand_inputs(entries, inputs_from=inputs_from, stac_asset=stac_asset)
    stems = distinct_stems(paths)
    job = LocateJob(parse_classes(queries, option="query"), opts, Path(out), checkpoint, arch, model, tokenizer,
                    clip_checkpoint=clip_checkpoint, clip_model=clip_model, clip_tokenizer=clip_tokenizer)
    job.check(paths, stems, [p for p in (checkpoint, clip_checkpoint) if p and Path(p).is_file()]
              + listing_files(entries, inputs_from))
    return run_inputs(job, paths, stems, device=device, redo=redo, log=log, engine=engine, address=address,
                      actors=actors)


@dataclass
class LocateWorker:
    model: object
    text: torch.Tensor                  # the queries' names then the background's
    owner: torch.Tensor                 # each query name's query index

    def windows(self, opts: LocateOptions) -> tuple[int, int]:
        window = opts.window or model_input_size(self.model)
        return window, opts.stride or window // 2

    def heat(self, scene: SceneTiles, tile, n_queries: int, opts: LocateOptions,
             on_batch=None) -> torch.Tensor | None:
        """``[n_queries, h, w]`` each query's probability against the background (None: no valid pixel);
        ``on_batch(share)`` as the tile's windows are encoded."""
        logits = tile_logits(scene, tile, self.model, self.text, attn=opts.attn, cls_lambda=opts.cls_lambda,
                             amp=opts.amp, window_batch_size=opts.window_batch_size, on_batch=on_batch)
        if logits is None:
            return None
        trim()  # the windows' buffers are freed: hand their pages back before the next tile
        return query_probabilities(logits.float(), self.owner, n_queries, opts.logit_scale)


@dataclass
class Sam3LocateWorker:
    """SAM 3 (or a fusion) on the queries' names (then the background's, which only the fusions' CLIP reads)."""
    worker: object                      # infer.sam3.Sam3Worker
    owner: torch.Tensor                 # each query name's query index
    stride: int

    def windows(self, opts: LocateOptions) -> tuple[int, int]:
        return self.worker.window(), self.stride

    def heat(self, scene: SceneTiles, tile, n_queries: int, opts: LocateOptions,
             on_batch=None) -> torch.Tensor | None:
        """``[n_queries, h, w]`` each query's SAM 3 map (its best name's); progress moves tile by tile."""
        from ..engine.sam3 import synonym_max

        maps = self.worker.tile_maps(scene, tile)
        if maps is None:
            return None
        return synonym_max(maps[:self.owner.numel()].float(), self.owner, n_queries)


@dataclass
class LocateJob:
    """One ``locate`` run, everything but the model's weights (see :mod:`farslip.infer.runner`)."""
    queries: list[list[str]]            # synonyms of each query
    options: LocateOptions
    out: Path
    checkpoint: str | Path | None = None
    arch: str | None = None
    model: object = None
    tokenizer: object = None
    command: str = "locate"
    clip_checkpoint: str | Path | None = None  # the SAM 3 fusions' CLIP (or clip_model + clip_tokenizer)
    clip_model: object = None
    clip_tokenizer: object = None

    @property
    def slugs(self) -> list[str]:
        return [slug(q[0]) for q in self.queries]

    def check(self, paths: Sequence[Path], stems: Sequence[str], extra_inputs: Sequence) -> None:
        opts = self.options
        if not 0 < opts.threshold <= 1:
            raise UsageError(f"--threshold {opts.threshold} must be in (0, 1]")
        background_names(self.queries, opts.background)
        if len(set(self.slugs)) != len(self.slugs):
            raise UsageError(f"two queries give the same file name: {self.slugs}")
        driver_for(f"x.{opts.vector_format}")
        check_resampling(opts.resampling)
        protocol = opts.sam3_protocol()
        if protocol is not None:
            from ..engine.sam3 import check_prompt_lengths
            from ..models.sam3 import require_transformers, sam3_tokenizer
            from .sam3 import check_sam3_models

            require_transformers()
            check_sam3_models(protocol, "locate", self.checkpoint, self.model, self.clip_checkpoint, self.clip_model)
            check_prompt_lengths(sam3_tokenizer(), query_table(self.queries)[0])
        elif self.clip_checkpoint is not None or self.clip_model is not None:
            raise UsageError("--clip-checkpoint is for the SAM 3 fusions (--protocol sam3-clip-*)")
        elif self.model is None and self.checkpoint is None:
            raise UsageError("locate needs a checkpoint (or a model and its tokenizer)")
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out}: is a file; locate writes a folder of outputs per image")
        refuse_overwriting_inputs([p for stem in stems for p in self.outputs(stem)], list(paths) + list(extra_inputs))

    def outputs(self, stem: str) -> list[Path]:
        """Every file locate writes for one input."""
        names = [f"{stem}.{s}.tif" for s in self.slugs] + [f"{stem}.regions.{self.options.vector_format}",
                                                            f"{stem}.locate.png", f"{stem}.locate.json"]
        return [self.out / n for n in names + ([f"{stem}.locate.html"] if self.options.html else [])]

    def settings(self) -> dict:
        values = {k: v for k, v in asdict(self.options).items() if k != "progress"}
        model = checkpoint_identity(self.checkpoint) if self.model is None else weights_fingerprint(self.model)
        clip = checkpoint_identity(self.clip_checkpoint) if self.clip_model is None else \
            weights_fingerprint(self.clip_model)
        return {**values, "command": self.command, "queries": self.queries, "checkpoint": model, "arch": self.arch,
                **({"clip_checkpoint": clip} if self.options.protocol else {})}

    def load(self, device: str):
        protocol = self.options.sam3_protocol()
        if protocol is not None:
            from .sam3 import sam3_worker

            names, owner = query_table(self.queries)
            background = background_names(self.queries, self.options.background) if protocol.needs_clip else []
            worker = sam3_worker(protocol, names + background, torch.arange(len(names) + len(background)),
                                 len(names) + len(background), checkpoint=self.checkpoint, model=self.model,
                                 clip_checkpoint=self.clip_checkpoint, clip_model=self.clip_model,
                                 clip_tokenizer=self.clip_tokenizer, arch=self.arch, device=device,
                                 amp=self.options.amp, window_batch_size=self.options.window_batch_size)
            return Sam3LocateWorker(worker, owner, protocol.raster_rule().stride)
        model, tokenizer = self.model, self.tokenizer
        if model is None:
            model, _, tokenizer = load_for_inference(self.arch, self.checkpoint, device=device)
        background = background_names(self.queries, self.options.background)
        text, owner = query_embeddings(model, tokenizer, self.queries, background, progress=self.options.progress)
        if self.model is None:
            # The queries are embedded: free the text tower (a ViT-B-16's 250 MB) before any image is read, so the
            # tiles' buffers never sit on top of it. A caller's own model is left whole.
            drop_text_tower(model)
        return LocateWorker(model, text, owner)

    def one(self, worker: LocateWorker, path: Path, stem: str) -> Done:
        with bounded_gdal_cache(self.options.gdal_cache_mb):
            r = _locate_one(path, stem, worker, [q[0] for q in self.queries], self.slugs, self.out, self.options)
        written = [r.regions, r.preview, r.html, *(q.heatmap for q in r.queries),
                   str(self.out / f"{stem}.locate.json")]
        return Done(r, [w for w in written if w], r.pixels)

    def recall(self, path: Path, stem: str) -> LocateResult | None:
        """The result of an input completed earlier, from ``OUT/<stem>.locate.json``."""
        try:
            fields_ = json.loads((self.out / f"{stem}.locate.json").read_text(encoding="utf-8"))
            fields_["queries"] = [QueryResult(**q) for q in fields_.get("queries", [])]
            return LocateResult(**fields_)
        except (OSError, ValueError, TypeError):
            return None

    def describe(self, r: LocateResult) -> list[str]:
        lines = [f"{r.image} ({format_pixels(r.pixels)}, {r.seconds:.1f} s): regions {r.regions}; preview "
                 f"{r.preview}" + (f"; map {r.html}" if r.html else "")
                 + ("" if r.crs else "; no CRS in the input: outputs in pixel coordinates")]
        return lines + [f"   {q.query!r}: {q.regions} regions, {q.area:.6g} {r.area_unit}, max {q.max_score:.3f} -> "
                        f"{q.heatmap}" for q in r.queries]


def background_names(query_syn: list[list[str]], background: Sequence[str]) -> list[str]:
    """The background vocabulary less the queries' own names."""
    own = {n.lower() for syn in query_syn for n in syn}
    names = [b for b in background if b.lower() not in own]
    if not names:
        raise UsageError("the background vocabulary is empty once the queries' own names are left out")
    return names


def query_embeddings(model, tokenizer, query_syn: list[list[str]], background: Sequence[str],
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text, owner)``: the embeddings of the queries' names then the background's (80 templates each), and
    each name's query index."""
    names, owner = query_table(query_syn)
    with torch.no_grad():
        text = name_embeddings(model, tokenizer, names + list(background), OVSS_TEMPLATES, batch_size=64,
                               progress=progress)
    return text, owner


def query_probabilities(logits: torch.Tensor, owner: torch.Tensor, n_queries: int, scale: float) -> torch.Tensor:
    """``[n_queries, h, w]`` probabilities from ``[names + background, h, w]`` logits: each name against the
    background (softmax over the two-way problem), the best name of each query."""
    n_names = owner.numel()
    bg = torch.logsumexp(scale * logits[n_names:], dim=0)
    p = torch.sigmoid(scale * logits[:n_names] - bg)
    out = p.new_full((n_queries,) + p.shape[1:], float("-inf"))
    idx = owner.to(p.device).view(-1, 1, 1).expand_as(p)
    return out.scatter_reduce_(0, idx, p, reduce="amax", include_self=True)


def _locate_one(path: Path, stem: str, worker, queries, slugs, out: Path, opts: LocateOptions) -> LocateResult:
    """One raster's outputs, finished together (:class:`~farslip.core.files.StagedFiles`), as in ``segment``;
    ``worker`` (:class:`LocateWorker` or :class:`Sam3LocateWorker`) gives each tile's heatmaps."""
    with StagedFiles() as stage:
        return _locate_staged(path, stem, worker, queries, slugs, out, opts, stage)


def _locate_staged(path: Path, stem: str, worker, queries, slugs, out: Path, opts: LocateOptions,
                   stage: StagedFiles) -> LocateResult:
    t0 = time.perf_counter()
    r = open_raster(path, opts.bands, opts.percentiles)  # a nonsense georeference stops here: nothing written
    window, stride = worker.windows(opts)
    scene = SceneTiles(r, window, stride, opts.scale, opts.block, opts.resampling)
    heat_paths = [out / f"{stem}.{s}.tif" for s in slugs]
    peaks = np.full(len(queries), np.nan)
    try:
        with ExitStack() as stack:
            dsts = [stack.enter_context(score_writer(stage(p), r.src, [q], kind="similarity", source=path))
                    for p, q in zip(heat_paths, queries)]
            for d in dsts:
                d.update_tags(FARSLIP_THRESHOLD=str(opts.threshold), **scene.tags())
            tiles = PixelProgress(scene, r.height * r.width, f"locate {path.name}", opts.progress)
            for tile in tiles:
                win = tile.window
                heat = worker.heat(scene, tile, len(queries), opts, on_batch=tiles.windows_done)
                if heat is None:
                    continue  # nothing valid: the COG keeps its nodata there
                prob = heat.cpu().numpy()
                valid = scene.valid(tile)
                if valid is not None:
                    prob[:, ~valid] = np.nan
                for i, d in enumerate(dsts):
                    d.write(prob[i].astype(np.float32), 1, window=win)
                    if np.isfinite(prob[i]).any():
                        peaks[i] = np.nanmax([peaks[i], np.nanmax(prob[i])])
        feats, summaries = Features.with_fields(REGION_FIELDS), []
        for q, hp, peak in zip(queries, heat_paths, peaks):
            before = len(feats)
            heatmap_polygons(stage(hp), opts.threshold, query=q, min_area=opts.min_area, simplify=opts.simplify,
                             features=feats, progress=opts.progress)
            areas = feats.columns.get("area", [])[before:]
            summaries.append(QueryResult(q, str(hp), round(float(peak), 4) if np.isfinite(peak) else 0.0,
                                         len(feats) - before, float(sum(areas))))
        regions, preview = out / f"{stem}.regions.{opts.vector_format}", out / f"{stem}.locate.png"
        write_features(feats, stage(regions), r.src.crs, "regions")
        write_heat_preview(r, [stage(p) for p in heat_paths], queries, opts.threshold, stage(preview),
                           opts.preview_size)
    finally:
        r.close()
    result = LocateResult(str(path), str(regions), str(preview), r.height * r.width, time.perf_counter() - t0,
                          summaries, crs=crs_name(r.src.crs), area_unit=area_unit(r.src.crs))
    if opts.html:
        from .webmap import write_html

        write_html(stage(out / f"{stem}.locate.html"), image=path, rasters=[stage(p) for p in heat_paths],
                   vectors=[stage(regions)], bands=opts.bands, progress=opts.progress)
        result.html = str(out / f"{stem}.locate.html")
    atomic_write(stage(out / f"{stem}.locate.json"), json.dumps(asdict(result), indent=2))
    return result


def write_heat_preview(r, heat_paths, queries, threshold: float, png: Path, max_side: int) -> Path:
    """The image, then one panel per query with its heatmap over the image and the threshold's contour (decimated
    reads of the COGs' overviews: bounded memory)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rasterio.enums import Resampling

    thumb = read_thumbnail(r, max_side).transpose(1, 2, 0)
    n = len(heat_paths) + 1
    cols = min(n, 3)
    rows = -(-n // cols)
    aspect = thumb.shape[0] / max(thumb.shape[1], 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols + 1, 4.5 * rows * aspect + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(thumb)
    axes[0, 0].set_title(r.path.name)
    for k, (hp, q) in enumerate(zip(heat_paths, queries), 1):
        with open_dataset(hp) as src:
            heat = src.read(1, out_shape=thumb.shape[:2], resampling=Resampling.bilinear)
        ax = axes.ravel()[k]
        ax.imshow(thumb)
        im = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", vmin=0, vmax=1, alpha=0.6)
        if np.nanmax(heat, initial=0) >= threshold:
            ax.contour(np.nan_to_num(heat, nan=0.0), levels=[threshold], colors="cyan", linewidths=1)
        ax.set_title(f'"{q}"')
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="probability against the background")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata=PNG_METADATA)
    plt.close(fig)
    return png
