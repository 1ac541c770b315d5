"""Many rasters on 1..N processes (``torchrun -m farslip segment|locate|classify ...``): the input files are
dealt to the ranks, each rank writes its files' outputs (atomically, by the commands themselves), a rerun skips
the inputs whose outputs are complete, and one summary covers every rank.

An input is complete when its completion record ``OUT/.farslip-done/<stem>.json`` -- written after all of its
outputs -- names the same file (path, size, modification time) and the same settings, and its outputs are still
there. A run that was stopped therefore resumes where it was; a run with other settings redoes everything.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..core.errors import FarslipError, UsageError
from ..core.files import atomic_write
from ..core.problems import Problem, append_problems
from ..core.distributed import gather, world

DONE_DIR = ".farslip-done"


@dataclass
class Outcome:
    """What happened to one input."""
    input: str
    status: str                         # "done" | "complete" (skipped: done before) | "failed"
    rank: int = 0
    seconds: float = 0.0
    pixels: int = 0
    outputs: list[str] = field(default_factory=list)
    error: str | None = None


def deal(paths: Sequence[Path], rank: int, world_size: int) -> list[Path]:
    """This rank's inputs: the largest file first to the rank with the fewest bytes so far (ties: the lower
    rank), so ranks finish together however the sizes vary; every rank computes the same dealing."""
    loads = [0] * world_size
    mine = []
    sizes = [(p.stat().st_size if p.exists() else 0) for p in paths]
    for i in sorted(range(len(paths)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        loads[r] += sizes[i]
        if r == rank:
            mine.append(i)
    return [paths[i] for i in sorted(mine)]


def settings_key(settings: dict) -> str:
    """A short fingerprint of the settings that change a result."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _record_path(out: Path, path: Path) -> Path:
    return out / DONE_DIR / f"{path.stem}.json"


def _identity(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_complete(out: Path, path: Path, key: str) -> bool:
    """Whether ``path``'s outputs in ``out`` were completed with the settings ``key`` and are still there."""
    record = _record_path(out, path)
    try:
        done = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same = {k: done.get(k) for k in ("input", "size", "mtime_ns")} == _identity(path) and done.get("settings") == key
    return same and all(Path(o).exists() for o in done.get("outputs", []))


def mark_complete(out: Path, path: Path, key: str, outputs: Sequence[str]) -> None:
    atomic_write(_record_path(out, path), json.dumps({**_identity(path), "settings": key,
                                                      "outputs": [str(o) for o in outputs]}, indent=1))


def run_many(paths: Sequence[Path], process: Callable[[Path], tuple[list[str], int]], *, out: Path | None,
             settings: dict, redo: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run ``process(path) -> (outputs, pixels)`` on this rank's share of ``paths`` and gather the outcomes.

    With ``out`` (commands that write files per input) an input already complete is skipped unless ``redo``,
    and a finished one is recorded. A user error or an unreadable file fails that input only and the others go
    on -- except for a single input on a single process, whose error is the command's. Returns the summary of
    all ranks (the same on every rank).
    """
    if len(paths) == 1 and world()[1] == 1:
        log = None  # nothing else to go on with: let the error through
    rank, size = world()
    key = settings_key(settings)
    t0 = time.perf_counter()
    outcomes = []
    for path in deal(list(paths), rank, size):
        if out is not None and not redo and is_complete(out, path, key):
            outcomes.append(Outcome(str(path), "complete", rank))
            continue
        start = time.perf_counter()
        try:
            outputs, pixels = process(path)
        except (FarslipError, OSError, ValueError) as exc:
            if log is None:
                raise
            log(f"{path}: FAILED -- {exc}")
            outcomes.append(Outcome(str(path), "failed", rank, error=str(exc)))
            continue
        if out is not None:
            mark_complete(out, path, key, outputs)
        outcomes.append(Outcome(str(path), "done", rank, round(time.perf_counter() - start, 3), pixels, outputs))
    order = {str(p): i for i, p in enumerate(paths)}
    every = sorted((o for part in gather(outcomes) for o in part), key=lambda o: order[o.input])
    if out is not None and rank == 0:
        report_failures(out, every)
    return summarise(every, size, time.perf_counter() - t0)


def report_failures(out: Path, outcomes: Sequence[Outcome]) -> None:
    """Failed inputs go to ``OUT/problems.jsonl`` in the one bad-input format (:class:`~farslip.core.Problem`)."""
    failed = [Problem("failed-input", o.input, o.error or "failed") for o in outcomes if o.status == "failed"]
    if failed:
        Path(out).mkdir(parents=True, exist_ok=True)
        append_problems(Path(out) / "problems.jsonl", failed)


def summarise(outcomes: Sequence[Outcome], processes: int, seconds: float) -> dict:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "complete", "failed")}
    pixels = sum(o.pixels for o in outcomes)
    return {"inputs": len(outcomes), **counts, "processes": processes, "seconds": round(seconds, 2),
            "megapixels": round(pixels / 1e6, 3), "megapixels_per_s": round(pixels / 1e6 / max(seconds, 1e-9), 3),
            "failures": {o.input: o.error for o in outcomes if o.status == "failed"},
            "outcomes": [asdict(o) for o in outcomes]}


def summary_line(command: str, summary: dict) -> str:
    """One line for the whole run, e.g. ``segment: 12 inputs on 2 processes: 9 done, 2 already complete, 1
    failed; 480.0 Mpx in 300 s (1.60 Mpx/s)``."""
    line = (f"{command}: {summary['inputs']} input(s) on {summary['processes']} process(es): {summary['done']} "
            f"done, {summary['complete']} already complete, {summary['failed']} failed")
    if summary["megapixels"]:
        line += (f"; {summary['megapixels']:.1f} Mpx in {summary['seconds']:.0f} s "
                 f"({summary['megapixels_per_s']:.2f} Mpx/s)")
    return line


def write_summary(out: Path, command: str, summary: dict) -> Path:
    """``OUT/.farslip-done/<command>-run.json``: the last run's summary (by the first rank only)."""
    path = out / DONE_DIR / f"{command}-run.json"
    if world()[0] == 0:
        atomic_write(path, json.dumps(summary, indent=1))
    return path


def checkpoint_identity(checkpoint) -> str:
    """A checkpoint in the settings fingerprint: its path and modification time (a retrained file redoes all)."""
    p = Path(str(checkpoint)) if checkpoint is not None else None
    return f"{p.resolve()}:{p.stat().st_mtime_ns}" if p is not None and p.is_file() else str(checkpoint)



# ----------------------------------------------------------------------------------------------------------------
# The commands over many inputs (what ``farslip segment|locate|classify`` run, on one process or under torchrun)

def _prefix() -> str:
    rank, size = world()
    return f"[rank {rank}] " if size > 1 else ""


def _load(model, tokenizer, checkpoint, arch, device, preprocess=None):
    from ..core.distributed import join, launched
    from .common import load_for_inference

    if launched():
        device = str(join(device).device)
    if model is None:
        if checkpoint is None:
            raise FarslipError("give a checkpoint (or a model and its tokenizer)")
        model, preprocess, tokenizer = load_for_inference(checkpoint, arch, device)
    return model, preprocess, tokenizer


def _settings(options, **extra) -> dict:
    values = {k: v for k, v in asdict(options).items() if k != "progress"}
    return {**values, **extra}


def segment_many(inputs: Sequence[str | Path], classes: Sequence[str] | None = None, *,
                 checkpoint=None, model=None, tokenizer=None, classes_file=None, out: str | Path = "segmentations",
                 arch: str | None = None, device: str = "auto", options=None, redo: bool = False,
                 inputs_from=None, stac_asset: str | None = None, log: Callable[[str], None] = print) -> dict:
    """:func:`~farslip.infer.segment` over many inputs (paths, globs, ``@list.txt``, STAC JSON; see
    :func:`~farslip.infer.inputs.expand_inputs`), dealt to the ranks under torchrun, skipping inputs already
    complete in ``out``. Returns the run's summary (:func:`summarise`)."""
    from ..engine import TextEmbeddingCache
    from .common import parse_classes
    from .inputs import expand_inputs, output_stems
    from .segmentation import SegmentOptions, segment, vector_path

    paths = expand_inputs(inputs, inputs_from=inputs_from, stac_asset=stac_asset)
    output_stems(paths)
    opts = options or SegmentOptions()
    out = Path(out)
    class_syn = parse_classes(classes, classes_file)
    model, _, tokenizer = _load(model, tokenizer, checkpoint, arch, device)
    cache = TextEmbeddingCache()

    def one(path: Path):
        vector = str(vector_path(opts.vector, path.stem, out, len(paths) > 1)) if opts.vector else None
        r = segment([path], [",".join(c) for c in class_syn], model=model, tokenizer=tokenizer, out=out,
                    options=replace(opts, vector=vector), text_cache=cache)[0]
        mp = r.pixels / max(r.seconds, 1e-9) / 1e6
        top = sorted(r.class_fractions.items(), key=lambda kv: -kv[1])[:5]
        log(f"{_prefix()}{r.image} -> {r.geotiff} ({r.pixels / 1e6:.1f} Mpx, {mp:.3g} Mpx/s); preview {r.preview}")
        log("   " + ", ".join(f"{n} {100 * f:.1f}%" for n, f in top))
        written = [r.geotiff, r.preview, r.confidence, r.probabilities, r.vectors, r.html,
                   str(out / f"{path.stem}.json")]
        return [w for w in written if w], r.pixels

    settings = _settings(opts, command="segment", classes=class_syn, checkpoint=checkpoint_identity(checkpoint),
                         arch=arch)
    return run_many(paths, one, out=out, settings=settings, redo=redo, log=log)


def locate_many(queries: Sequence[str], inputs: Sequence[str | Path], *, checkpoint=None, model=None,
                tokenizer=None, out: str | Path = "locate", arch: str | None = None, device: str = "auto",
                options=None, redo: bool = False, inputs_from=None, stac_asset: str | None = None,
                log: Callable[[str], None] = print) -> dict:
    """:func:`~farslip.infer.localization.locate` over many inputs, as :func:`segment_many`."""
    from ..engine import TextEmbeddingCache
    from .inputs import expand_inputs, output_stems
    from ..models import drop_text_tower
    from .common import parse_classes
    from .localization import LocateOptions, background_names, locate, query_embeddings

    paths = expand_inputs(inputs, inputs_from=inputs_from, stac_asset=stac_asset)
    output_stems(paths)
    opts = options or LocateOptions()
    out = Path(out)
    own_model = model is None
    model, _, tokenizer = _load(model, tokenizer, checkpoint, arch, device)
    cache = TextEmbeddingCache()
    if own_model:
        # The queries are known now: embed them once and free the text tower (a ViT-B-16's 250 MB) before any
        # image is read, so the tiles' buffers never sit on top of it. A caller's own model is left whole.
        query_syn = parse_classes(list(queries))
        query_embeddings(model, tokenizer, query_syn, background_names(query_syn, opts.background), cache)
        drop_text_tower(model)

    def one(path: Path):
        r = locate(list(queries), [path], model=model, tokenizer=tokenizer, out=out, options=opts,
                   text_cache=cache)[0]
        log(f"{_prefix()}{r.image} ({r.pixels / 1e6:.1f} Mpx, {r.seconds:.1f} s): regions {r.regions}; "
            f"preview {r.preview}" + (f"; map {r.html}" if r.html else ""))
        for q in r.queries:
            log(f"   {q.query!r}: {q.regions} regions, {q.area:.1f} map units^2, max {q.max_score:.3f} -> {q.heatmap}")
        written = [r.regions, r.preview, r.html, *(q.heatmap for q in r.queries),
                   str(out / f"{path.stem}.locate.json")]
        return [w for w in written if w], r.pixels

    settings = _settings(opts, command="locate", queries=list(queries), checkpoint=checkpoint_identity(checkpoint),
                         arch=arch)
    return run_many(paths, one, out=out, settings=settings, redo=redo, log=log)


def classify_many(inputs: Sequence[str | Path], classes: Sequence[str] | None = None, *, checkpoint=None,
                  model=None, preprocess=None, tokenizer=None, classes_file=None, top_k: int = 5,
                  arch: str | None = None, device: str = "auto", batch_size: int = 32, progress: bool = True,
                  amp=None, inputs_from=None, stac_asset: str | None = None,
                  log: Callable[[str], None] = print) -> tuple[list, dict]:
    """:func:`~farslip.infer.classify` over many inputs: each rank classifies its files in batches, the
    predictions come back in input order (on every rank) with the run's summary; an unreadable file is counted
    and named, the others are classified."""
    from .classify import classify
    from .common import parse_classes
    from .inputs import expand_inputs

    paths = expand_inputs(inputs, inputs_from=inputs_from, stac_asset=stac_asset)
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    parse_classes(classes, classes_file)  # a bad class list is the user's, not a file's: refused before any work
    model, preprocess, tokenizer = _load(model, tokenizer, checkpoint, arch, device, preprocess)
    rank, size = world()
    kw = dict(classes_file=classes_file, model=model, preprocess=preprocess, tokenizer=tokenizer, top_k=top_k,
              batch_size=batch_size, progress=progress and rank == 0, amp=amp)
    t0 = time.perf_counter()
    mine = deal(paths, rank, size)
    try:
        preds, outcomes = (classify(mine, classes, **kw) if mine else []), []
    except (FarslipError, OSError, ValueError):
        preds, outcomes = [], []  # some file is bad: one at a time, to name it and keep the others
        for p in mine:
            try:
                preds += classify([p], classes, **kw)
            except (FarslipError, OSError, ValueError) as exc:
                if len(paths) == 1 and size == 1:
                    raise
                log(f"{p}: FAILED -- {exc}")
                outcomes.append(Outcome(str(p), "failed", rank, error=str(exc)))
    done = {pr.image for pr in preds}
    outcomes += [Outcome(pr.image, "done", rank) for pr in preds]
    outcomes += [Outcome(str(p), "failed", rank, error="unreadable image (skipped)") for p in mine
                 if str(p) not in done and all(o.input != str(p) for o in outcomes)]
    order = {str(p): i for i, p in enumerate(paths)}
    parts = gather((preds, outcomes))
    every = sorted((pr for ps, _ in parts for pr in ps), key=lambda pr: order[pr.image])
    summary = summarise(sorted((o for _, os_ in parts for o in os_), key=lambda o: order[o.input]), size,
                        time.perf_counter() - t0)
    return every, summary
