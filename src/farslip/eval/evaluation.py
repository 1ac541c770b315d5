"""One evaluation run, as ``farslip eval`` makes it: the paper's suites on the registered benchmarks (or the same
protocols on a user's own data), the model loaded once, one report with what made its numbers, written to
``results.json`` and ``results.md``.

    run = farslip.eval.evaluate("all", checkpoint="farslip2-vit-b-16", data_root="/data/rs-bench")
    run.report["sections"]["ovss"]["mean"]["mIoU"]; run.paths["json"]; run.status   # 0, 1 (a set failed), 2 (none ran)

    own = farslip.eval.OVSSData("my/img", "my/ann", "my/classes.txt", reduce_zero_label=True)
    farslip.eval.evaluate("ovss", checkpoint="model.pt", own=own,
                          options=farslip.eval.EvalOptions(protocol="segearth", protocol_overrides={"threshold": 0.3}))

Every combination of options is checked before anything is loaded: a user's mistake is a
:class:`~farslip.core.errors.UsageError` naming the option (as the command line spells it), never a model
loaded for nothing.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

import torch.distributed

from ..core import distributed
from ..core.errors import UsageError
from ..engine.protocols import get_protocol, is_sam3
from .metrics import TIE_RULES
from .registry import DEFAULT_ROOTS, select, select_any
from .report import write_report
from .suite import run_custom, run_registered

SUITES = ("classification", "retrieval", "ovss", "all")
#: ``amp`` choices: auto (the official protocol: float16 autocast on CUDA for an fp32 model, none on the CPU),
#: on (float16 on CUDA), off, bf16 (bfloat16 on any device; fast on bf16 CPUs, not the paper's arithmetic).
AMP_CHOICES = {"auto": None, "on": True, "off": False, "bf16": "bf16"}


@dataclass
class ClassificationData:
    """A user's own scene-classification set (``farslip eval classification --csv ... --classnames ...``)."""
    kind: ClassVar[str] = "classification"
    required: ClassVar[tuple[str, ...]] = ("csv", "classnames")

    csv: str | Path | None                    # table with an image-path column and a label column
    classnames: str | Path | None             # one class name a line, in label order
    images: str | Path | None = None          # folder the CSV's paths are relative to (default: the CSV's folder)
    templates: Sequence[str] | None = None    # prompts with {c}; default the two scene prompts
    img_key: str = "filepath"
    class_key: str = "label"
    separator: str = ","
    name: str | None = None                   # in the tables (default: the CSV's stem)

    def run_kwargs(self) -> dict:
        return dict(csv_path=self.csv, classnames_path=self.classnames, image_root=self.images,
                    templates=self.templates, csv_img_key=self.img_key, csv_class_key=self.class_key,
                    csv_separator=self.separator)


@dataclass
class RetrievalData:
    """A user's own image-caption table (``farslip eval retrieval --csv ...``); several rows per image allowed."""
    kind: ClassVar[str] = "retrieval"
    required: ClassVar[tuple[str, ...]] = ("csv",)

    csv: str | Path | None
    images: str | Path | None = None          # folder the CSV's paths are relative to (default: the CSV's folder)
    caption_key: str = "title"
    img_key: str = "filepath"
    separator: str = ","
    prefix: str = ""                          # text prepended to every caption
    name: str | None = None                   # in the tables (default: the CSV's stem)

    def run_kwargs(self) -> dict:
        return dict(csv_path=self.csv, image_root=self.images, caption_key=self.caption_key, prefix=self.prefix,
                    csv_img_key=self.img_key, csv_separator=self.separator)


@dataclass
class OVSSData:
    """A user's own segmentation set (``farslip eval ovss --img-dir ... --ann-dir ... --classes-file ...``)."""
    kind: ClassVar[str] = "ovss"
    required: ClassVar[tuple[str, ...]] = ("img_dir", "ann_dir", "classes_file")

    img_dir: str | Path | None
    ann_dir: str | Path | None
    classes_file: str | Path | None           # one class a line in label order, synonyms with commas; or a shipped set
    img_suffix: str = ".png"
    ann_suffix: str = ".png"
    ignore_index: int = 255
    reduce_zero_label: bool = False           # label 0 = no data; classes start at 1
    name: str | None = None                   # in the tables (default: the image folder's name, layout folders skipped)

    def run_kwargs(self) -> dict:
        from ..engine.class_files import resolve_class_file
        from .ovss import OVSSDataset

        classes = str(resolve_class_file(self.classes_file))  # a file, or a shipped set by name
        return dict(dataset=OVSSDataset(str(self.img_dir), str(self.ann_dir), classes, name=own_name(self),
                                        img_suffix=self.img_suffix, ann_suffix=self.ann_suffix,
                                        ignore_index=self.ignore_index, reduce_zero_label=self.reduce_zero_label))


OwnData = Union[ClassificationData, RetrievalData, OVSSData]


@dataclass
class EvalOptions:
    """How the suites run; None: the protocol's own value. ``protocol_overrides`` takes any OVSS protocol setting
    (:data:`~farslip.engine.protocols.PROTOCOL_SETTINGS`: attn, scale, crop, stride, logit_scale, cls_lambda,
    cls_from, threshold, background_index, window_to_model_size, simfeatup, half_model) and replaces the
    protocol's value on every dataset, registered ones too (None leaves it)."""
    amp: str = "auto"                          # one of AMP_CHOICES
    batch_size: int | None = None              # images per batch (128; OVSS: 4 images, their windows batched)
    workers: int | None = None                 # DataLoader workers (default min(4, CPUs))
    limit: int | None = None                   # only the first N records of each dataset (smoke runs)
    on_error: str = "skip"                     # bad records: "skip" and count, or "raise"
    progress: bool = True
    ties: str = "official"                     # ranking of equal scores (classification, retrieval)
    protocol: str = "farslip"                  # OVSS: "farslip" (the paper's table) or "segearth"
    protocol_overrides: Mapping[str, Any] = field(default_factory=dict)  # OVSS values replacing the protocol's
    window_batch_size: int | None = None       # OVSS windows per encoder call
    overlays: int = 3                          # OVSS image|prediction|truth PNGs per dataset

    def for_suite(self, kind: str) -> dict:
        """Keyword arguments of the suite functions (:func:`~farslip.eval.suite.run_registered`, ``run_custom``)."""
        opts = {"num_workers": self.workers, "limit": self.limit, "show_progress": self.progress,
                "amp": AMP_CHOICES[self.amp]}
        if kind == "ovss":
            opts.update(protocol=self.protocol, window_batch_size=self.window_batch_size, overlays=self.overlays,
                        **self.protocol_overrides)
            if self.batch_size:
                opts["batch_size"] = self.batch_size
        else:
            opts.update(ties=self.ties, batch_size=self.batch_size or 128)
        return opts


@dataclass
class EvalReport:
    """What :func:`evaluate` made: the report (``meta``, ``sections``), the files written (on the first rank;
    None on the others), and the counts that decide the exit status."""
    report: dict
    paths: dict[str, Path] | None
    evaluated: int
    failed: int

    @property
    def status(self) -> int:
        """0: every dataset ran; 1: some failed; 2: none was evaluated."""
        if self.evaluated == 0:
            return 2
        return 1 if self.failed else 0


def evaluate(suite: str = "all", checkpoint: str | Path | None = None, *, data_root: str | Path | None = None,
             roots: Mapping[str, str | Path] | None = None, datasets: Sequence[str] | None = None,
             own: OwnData | None = None, output: str | Path | None = None, arch: str | None = None,
             device: str | None = None, precision: str = "fp32", quick_gelu: bool | None = None,
             context_length: int | None = None, rs_ovss_method: str | None = None, model=None, preprocess=None,
             tokenizer=None, options: EvalOptions | None = None, clip_checkpoint: str | Path | None = None,
             sam3=None, log: Callable[[str], None] = print) -> EvalReport:
    """Evaluate a checkpoint with the paper's protocols and write ``results.json`` / ``results.md``.

    Args:
        suite: ``classification``, ``retrieval``, ``ovss`` or ``all`` (the three on the registered benchmarks).
        checkpoint: a released model's name, a checkpoint file or an open_clip pretrained tag (as
            :func:`farslip.load_model`); with ``model`` given, only recorded in the report.
        data_root, roots: the registered benchmarks' layout (see :mod:`farslip.eval.registry`); ``roots`` moves
            a top folder (``{"ovss": "/mnt/segearth/data"}``).
        datasets: registered names or aliases (default: all of the suite).
        own: a user's own dataset instead of the registered ones (:class:`ClassificationData`,
            :class:`RetrievalData`, :class:`OVSSData`, matching ``suite``).
        output: folder for the reports and overlays (default ``runs/eval/<checkpoint>-<suite>-<time>``).
        arch, device, precision, quick_gelu, context_length, rs_ovss_method: as :func:`farslip.load_model`
            (device default: CUDA when there is one).
        model, preprocess, tokenizer: an already loaded model (all three), evaluated as it is, where it is
            (the loading arguments are then unused).
        options: :class:`EvalOptions`.
        clip_checkpoint, sam3: with a SAM 3 protocol (``options.protocol``: ``segearth-ov3`` or a fusion),
            ``checkpoint`` (or ``sam3``, a loaded ``Sam3Model``) is SAM 3's weights (a file such as sam3.pt, the
            Hub's files, or the name ``sam3``), and the CLIP -- which the fusions and ``suite="all"``'s
            classification and retrieval need -- is ``clip_checkpoint`` (or ``model`` and co., with ``arch``, ...).
        log: gets each dataset's line (done, missing, failed), on the first rank only.

    Under ``torchrun`` every rank runs its share of each dataset and gets the same numbers; the process group is
    joined here when the launcher started one and nobody has joined it yet, and left again after the run.
    """
    options = options or EvalOptions()
    chosen = _check_data(suite, own, data_root, roots, datasets)
    _check_options(suite, options)
    sam3_protocol = suite in ("ovss", "all") and is_sam3(options.protocol)
    if sam3_protocol:
        checkpoint, clip_checkpoint = _check_sam3_models(suite, options, checkpoint, clip_checkpoint, sam3, model,
                                                         preprocess, tokenizer)
    elif clip_checkpoint is not None or sam3 is not None:
        raise UsageError("--clip-checkpoint and a SAM 3 model are for the SAM 3 protocols (--protocol segearth-ov3, "
                         "sam3-clip-*); with a CLIP protocol --checkpoint names the CLIP")
    else:
        _check_model(checkpoint, arch, model, preprocess, tokenizer)
    out_dir = Path(output) if output else default_output(checkpoint, arch, suite)
    _refuse_outputs_over_inputs(own, out_dir, [data_root, *(roots or {}).values()])
    # torchrun's ranks join the group here, one GPU per local rank; a caller that joined it keeps it
    joined = distributed.launched() and not (torch.distributed.is_available() and torch.distributed.is_initialized())
    if joined:
        device = str(distributed.join(device or "auto").device)
    main = distributed.is_main()
    log = log if main else (lambda _line: None)
    clip_weights = clip_checkpoint if sam3_protocol else checkpoint
    if sam3_protocol and sam3 is None:
        from ..models.sam3 import load_sam3

        sam3 = load_sam3(checkpoint, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))[0]
    if model is None and (clip_weights is not None or not sam3_protocol):
        model, preprocess, tokenizer = _load(clip_weights, arch, device, precision, quick_gelu, context_length,
                                             rs_ovss_method)
        for line in _load_notes(clip_weights, model, suite, options):
            log(line)
    elif model is not None:
        precision = "as given"  # the caller's model runs as it is
    if own is not None:
        sections = {suite: _run_own(own, model, tokenizer, preprocess, out_dir, options, log, sam3)}
    else:
        sections = _run_registered(suite, chosen, data_root, roots, datasets, model, tokenizer, preprocess,
                                   out_dir, options, log, sam3)
    meta = _meta(clip_weights, arch, model if model is not None else sam3, precision, options, data_root, sections)
    if sam3_protocol:
        meta.update(checkpoint=None if checkpoint is None else str(checkpoint),
                    clip_checkpoint=None if clip_weights is None else str(clip_weights),
                    sam3=getattr(sam3, "farslip_sam3", None) or {"sam3": "a loaded model"})
        if model is None:
            meta.update(model="SAM 3", precision="the protocol's autocast")
    report = {"meta": meta, "sections": sections}
    paths = write_report(report, out_dir) if main else None
    if joined:  # after a run every rank finished (leave() waits for all of them); after a failure the process ends
        distributed.leave()
    return EvalReport(report, paths, evaluated=sum(s["evaluated"] for s in sections.values()),
                      failed=sum(len(s["failed"]) for s in sections.values()))


def published_numbers(checkpoint) -> dict | None:
    """The numbers the models registry records for a checkpoint given by name, to set beside the measured ones."""
    from ..models.registry import find_entry

    entry = find_entry(checkpoint)
    if entry is None or not entry.paper:
        return None
    return {"model": entry.name, "numbers": dict(entry.paper), "per_set": dict(entry.paper_sets)}


def default_output(checkpoint, arch: str | None, suite: str) -> Path:
    stem = Path(checkpoint).stem if checkpoint else (arch or "model")
    return Path("runs") / "eval" / f"{stem}-{suite}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def own_name(own: OwnData) -> str:
    """A user's dataset's name in the tables: its ``name``, else the CSV's stem, else the image folder's name
    skipping layout folders (``LoveDA/img_dir/val`` -> ``LoveDA``)."""
    if own.name:
        return own.name
    if not isinstance(own, OVSSData):
        return Path(own.csv).stem
    path = Path(own.img_dir).resolve()
    layout = {"val", "valid", "validation", "test", "train", "img_dir", "images", "imgs", "image"}
    return next((p.name for p in (path, *path.parents) if p.name and p.name.lower() not in layout), path.name)


# ---------------------------------------------------------------------------------------------------------------
# Checks, before anything is loaded

def _check_data(suite: str, own: OwnData | None, data_root, roots, datasets) -> dict[str, list]:
    """The registered benchmarks chosen, per kind (none for own data)."""
    if suite not in SUITES:
        raise UsageError(f"unknown suite {suite!r}; one of {', '.join(SUITES)}")
    for kind in roots or {}:
        if kind not in DEFAULT_ROOTS:
            raise UsageError(f"--root: unknown kind {kind!r} ({', '.join(DEFAULT_ROOTS)})")
    if own is not None:
        _check_own(suite, own, data_root, roots, datasets)
        return {}
    if data_root is None and not roots:
        raise UsageError(f"eval {suite}: give --data-root DIR (registered benchmarks)"
                         + ("" if suite == "all" else " or your own data (see --help)"))
    try:
        return select_any(datasets) if suite == "all" else {suite: select(suite, datasets)}
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


def _check_model(checkpoint, arch, model, preprocess, tokenizer) -> None:
    if model is not None and (preprocess is None or tokenizer is None):
        raise UsageError("a loaded model needs its preprocess and tokenizer too")
    if model is None and checkpoint is None and arch is None:
        raise UsageError("give --checkpoint and/or --model")


def _check_own(suite: str, own: OwnData, data_root, roots, datasets) -> None:
    if own.kind != suite:
        raise UsageError(f"eval {suite}: own data for {own.kind} given ({type(own).__name__})")
    if datasets or data_root is not None or roots:
        raise UsageError("use either --data-root/--root/--datasets or your own data, not both")
    lacking = ["--" + n.replace("_", "-") for n in own.required if not getattr(own, n)]
    if lacking:
        raise UsageError(f"eval {suite}: own data also needs {' '.join(lacking)}")
    files = {"csv": getattr(own, "csv", None), "classnames": getattr(own, "classnames", None)}
    folders = {"images": getattr(own, "images", None), "img_dir": getattr(own, "img_dir", None),
               "ann_dir": getattr(own, "ann_dir", None)}
    for option, path in files.items():
        if path is not None and not Path(path).is_file():
            raise UsageError(f"--{option.replace('_', '-')} {path}: no such file")
    for option, path in folders.items():
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"--{option.replace('_', '-')} {path}: no such folder")
    if isinstance(own, OVSSData):
        from ..engine.class_files import resolve_class_file

        resolve_class_file(own.classes_file)  # a file, or a shipped set by name


def _check_sam3_models(suite, options, checkpoint, clip_checkpoint, sam3, model, preprocess, tokenizer):
    """With a SAM 3 protocol: SAM 3's weights are needed, and a CLIP for the fusions and for ``all``'s other
    suites; a file given is checked to exist before anything loads."""
    from ..engine.protocols import get_protocol, is_sam3

    protocol = get_protocol(options.protocol)
    if sam3 is None and checkpoint is None:
        raise UsageError(f"protocol {protocol.name} runs SAM 3: give its weights as --checkpoint (sam3.pt, the Hub's "
                         "facebook/sam3 files, or the name sam3)")
    needs_clip = protocol.needs_clip or suite == "all"
    has_clip = clip_checkpoint is not None or model is not None
    if needs_clip and not has_clip:
        why = f"protocol {protocol.name} fuses SAM 3 with a CLIP" if protocol.needs_clip else \
            "eval all's classification and retrieval run a CLIP"
        raise UsageError(f"{why}: give the CLIP as --clip-checkpoint (a file or a released model's name)")
    if not needs_clip and has_clip:
        raise UsageError(f"--clip-checkpoint: protocol {protocol.name} runs SAM 3 alone (the fusions sam3-clip-* "
                         "take a CLIP)")
    if model is not None and (preprocess is None or tokenizer is None):
        raise UsageError("a loaded model needs its preprocess and tokenizer too")
    return checkpoint, clip_checkpoint


def _check_options(suite: str, options: EvalOptions) -> None:
    if options.amp not in AMP_CHOICES:
        raise UsageError(f"--amp {options.amp}: one of {', '.join(AMP_CHOICES)}")
    if options.on_error not in ("skip", "raise"):
        raise UsageError(f"--on-error {options.on_error}: skip or raise")
    if options.ties not in TIE_RULES:
        raise UsageError(f"--ties {options.ties}: one of {', '.join(TIE_RULES)}")
    if suite not in ("ovss", "all"):
        return
    try:
        protocol = get_protocol(options.protocol, options.protocol_overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"OVSS protocol: {exc}") from None
    if is_sam3(protocol):
        return
    if protocol.simfeatup:  # a bad weights file stops here, not after the model loads
        from ..engine.simfeatup import read_simfeatup_state

        read_simfeatup_state(protocol.simfeatup)


def _refuse_outputs_over_inputs(own: OwnData | None, out_dir: Path, data_roots: list) -> None:
    """results.json, results.md and overlays/ must not replace the files or folders being evaluated, nor go in
    among the registered benchmarks (``--data-root``, ``--root``)."""
    from ..core.files import refuse_overwriting_inputs

    for root in (Path(r).resolve() for r in data_roots if r):
        if out_dir.resolve() == root or root in out_dir.resolve().parents:
            raise UsageError(f"--output {out_dir}: is inside the benchmarks of --data-root/--root {root}; results "
                             "and overlays would be written among the datasets: choose an --output outside it")

    files = [getattr(own, k, None) for k in ("csv", "classnames", "classes_file")]
    refuse_overwriting_inputs([out_dir / "results.json", out_dir / "results.md"], [f for f in files if f],
                              hint="choose another --output")
    overlays = (out_dir / "overlays").resolve()
    for option in ("img_dir", "ann_dir"):
        folder = getattr(own, option, None)
        if folder and (Path(folder).resolve() == overlays or overlays in Path(folder).resolve().parents):
            raise UsageError(f"--output {out_dir}: its overlays/ would be written into --{option.replace('_', '-')} "
                             f"{folder}; choose another --output")


# ---------------------------------------------------------------------------------------------------------------
# The run

def _load(checkpoint, arch, device, precision, quick_gelu, context_length, rs_ovss_method):
    import torch

    from ..models import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _, preprocess, tokenizer = load_model(arch, checkpoint, device=device, precision=precision,
                                                 quick_gelu=quick_gelu, context_length=context_length,
                                                 rs_ovss_method=rs_ovss_method)
    return model.eval(), preprocess, tokenizer


def _load_notes(checkpoint, model, suite: str, options: EvalOptions) -> list[str]:
    notes = []
    if checkpoint is None:
        notes.append("warning: no checkpoint (--checkpoint): evaluating randomly initialised weights")
    if next(model.parameters()).device.type == "cpu" and options.amp == "auto" and suite in ("ovss", "all"):
        from ..models.precision import cpu_has_native_bf16

        if cpu_has_native_bf16():
            notes.append("note: this CPU computes bf16 natively; --amp bf16 (amp='bf16') runs OVSS about 3x faster "
                         "(not the paper's fp32 arithmetic: a few pixels in a thousand change class)")
    return notes


def _run_own(own: OwnData, model, tokenizer, preprocess, out_dir: Path, options: EvalOptions, log, sam3=None) -> dict:
    extra = {"sam3": sam3} if own.kind == "ovss" and sam3 is not None else {}
    return run_custom(own.kind, model, tokenizer, preprocess, own_name(own), on_error=options.on_error,
                      overlay_root=out_dir / "overlays", log=log, **own.run_kwargs(), **options.for_suite(own.kind),
                      **extra)


def _run_registered(suite, chosen, data_root, roots, datasets, model, tokenizer, preprocess, out_dir: Path,
                    options: EvalOptions, log, sam3=None) -> dict:
    from ..engine import TextEmbeddingCache

    cache = TextEmbeddingCache()
    sections = {}
    for kind, benches in chosen.items():
        if suite == "all" and datasets and not benches:  # `all --datasets aid loveda`: no retrieval section
            continue
        extra = {"sam3": sam3} if kind == "ovss" and sam3 is not None else {}
        sections[kind] = run_registered(kind, model, tokenizer, preprocess, data_root=data_root, roots=roots,
                                        names=[b.name for b in benches], on_error=options.on_error,
                                        text_cache=cache, overlay_root=out_dir / "overlays" if kind == "ovss" else None,
                                        log=log, **options.for_suite(kind), **extra)
    return sections


def _meta(checkpoint, arch, model, precision: str, options: EvalOptions, data_root, sections: dict) -> dict:
    """What made the numbers: the weights, the device and arithmetic, the processes, the OVSS protocol, and the
    numbers published for a model given by name."""
    meta = {"checkpoint": None if checkpoint is None else str(checkpoint),
            "model": getattr(model, "farslip_arch", arch), "device": str(next(model.parameters()).device),
            "precision": precision, "amp": options.amp, "data_root": None if data_root is None else str(data_root),
            "when": _dt.datetime.now().isoformat(timespec="seconds"), "processes": distributed.world()[1]}
    if "ovss" in sections:
        meta["ovss"] = sections["ovss"]["protocol"]
    published = published_numbers(checkpoint)
    if published:
        meta["published"] = published
    return meta
