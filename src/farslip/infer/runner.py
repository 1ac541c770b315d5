"""The many-input runner: one job (segment, locate) over many rasters, on one process, on the processes torchrun
started, or on a Ray cluster (``engine="ray"``, :mod:`farslip.infer.ray_engine`), resumable.

A job is an object with five methods -- ``settings()`` (what changes its outputs), ``load(device)`` (the model
part, built once per process), ``one(worker, path, stem)`` (one input's outputs), ``describe(result)`` (the
lines printed for it) and ``recall(path, stem)`` (the result of an input completed earlier, read back from its
outputs) -- so the same job runs on either engine. Locally :func:`run_inputs` deals the inputs to the ranks
(largest file first to the least loaded rank: without Ray the split is static), skips the inputs whose outputs are
complete, runs the others, and gathers one :class:`Run` for all ranks; on Ray the inputs go to whichever model
actor is free.

An input is complete when its completion record ``OUT/.farslip-done/<stem>.<command>.json`` -- written after all
of its outputs -- names the same file (path, size, modification time) and the same settings, and its outputs are
still there (one record per command: ``segment`` and ``locate`` may share a folder). A stopped run therefore resumes where it was; a run with other settings redoes everything. One input that
fails (a user error or an unreadable file) is reported in ``OUT/problems.jsonl`` and the others go on -- except a
single input on a single process, whose error is the command's.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..core.distributed import gather, job_ranks, launched, world
from ..core.errors import FarslipError, UsageError
from ..core.files import atomic_write, same_file
from ..core.problems import Problem, append_problems

DONE_DIR = ".farslip-done"
Log = Callable[[str], None]


class InputJob(Protocol):
    command: str
    out: Path
    options: Any                        # its ``progress`` says whether each input shows a progress bar
    model: Any                          # a caller's model in memory; None: ``load`` reads the checkpoint

    def outputs(self, stem: str) -> list[Path]: ...

    def settings(self) -> dict: ...

    def load(self, device: str) -> Any: ...

    def one(self, worker: Any, path: Path, stem: str) -> "Done": ...

    def describe(self, result: Any) -> list[str]: ...

    def recall(self, path: Path, stem: str) -> Any: ...


@dataclass
class Done:
    """What one input gave: its result object, the files written (checked on a rerun) and its pixel count."""
    result: Any
    outputs: list[str]
    pixels: int


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
    worker: str | None = None           # Ray: the actor's node and process that made the outputs
    tries: int = 1                      # Ray: 2 or more when a worker died on it and it was tried again


@dataclass
class Run:
    """A command over many inputs: the results of the inputs done now or complete before (read back from their
    records), in input order -- a run is a sequence of them: ``farslip.segment(...)[0]`` -- and the outcome of
    every input."""
    command: str
    results: list
    outcomes: list[Outcome]
    processes: int = 1
    seconds: float = 0.0
    record: Path | None = None          # OUT/.farslip-done/<command>-run.json
    rank: int = 0                       # the process this view of the run is from (rank 0 prints)
    engine: str = "local"               # "local" (this process or torchrun's) | "ray" (processes = model actors)

    def __getitem__(self, i):
        return self.results[i]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> dict[str, str]:
        return {o.input: o.error or "failed" for o in self.outcomes if o.status == "failed"}

    @property
    def megapixels(self) -> float:
        return sum(o.pixels for o in self.outcomes) / 1e6

    def summary(self) -> dict:
        """The run as the JSON record ``OUT/.farslip-done/<command>-run.json`` holds it."""
        mpx = self.megapixels
        return {"inputs": len(self.outcomes), "done": self.count("done"), "complete": self.count("complete"),
                "failed": self.count("failed"), "engine": self.engine, "processes": self.processes,
                "seconds": round(self.seconds, 2),
                "megapixels": round(mpx, 3), "megapixels_per_s": round(mpx / max(self.seconds, 1e-9), 3),
                "failures": self.failures, "outcomes": [asdict(o) for o in self.outcomes]}

    def line(self) -> str:
        """One line for the whole run, e.g. ``segment: 12 input(s) on 2 process(es): 9 done, 2 already complete,
        1 failed; 480.0 Mpx in 300 s (1.6 Mpx/s)`` (on Ray: ``on 2 Ray actor(s)``)."""
        workers = f"{self.processes} Ray actor(s)" if self.engine == "ray" else f"{self.processes} process(es)"
        text = (f"{self.command}: {len(self.outcomes)} input(s) on {workers}: "
                f"{self.count('done')} done, {self.count('complete')} already complete, {self.count('failed')} failed")
        if self.megapixels:
            text += (f"; {format_pixels(self.megapixels * 1e6)} in {self.seconds:.0f} s "
                     f"({self.megapixels / max(self.seconds, 1e-9):.3g} Mpx/s)")
        return text


def format_pixels(n: float) -> str:
    """A pixel count for people: ``16.8 Mpx``, or ``1,920 px`` below a tenth of a megapixel (not ``0.0 Mpx``)."""
    return f"{n / 1e6:.1f} Mpx" if n >= 1e5 else f"{int(n):,} px"


def deal(paths: Sequence[Path], rank: int, world_size: int) -> list[int]:
    """The indexes of this rank's inputs: the largest file first to the rank with the fewest bytes so far (ties:
    the lower rank), so ranks finish together however the sizes vary; every rank computes the same dealing."""
    loads = [0] * world_size
    mine = []
    sizes = [(p.stat().st_size if p.exists() else 0) for p in paths]
    for i in sorted(range(len(paths)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        loads[r] += sizes[i]
        if r == rank:
            mine.append(i)
    return sorted(mine)


def settings_key(settings: dict) -> str:
    """A short fingerprint of the settings that change a result."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out: Path, command: str, stem: str) -> Path:
    """An input's completion record: one per command, so that ``segment`` and ``locate`` writing into one folder
    neither take each other's outputs for their own nor remove them as stale."""
    return out / DONE_DIR / f"{stem}.{command.replace(' ', '-')}.json"


def _identity(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_complete(out: Path, path: Path, key: str, stem: str | None = None, *, command: str) -> bool:
    """Whether ``command``'s outputs of ``path`` in ``out`` were completed with the settings ``key`` and are still
    there."""
    try:
        done = json.loads(record_path(out, command, stem or path.stem).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same = {k: done.get(k) for k in ("input", "size", "mtime_ns")} == _identity(path) and done.get("settings") == key
    return same and all(Path(o).exists() for o in done.get("outputs", []))


def mark_complete(out: Path, path: Path, key: str, outputs: Sequence[str], stem: str | None = None, *,
                  command: str) -> None:
    atomic_write(record_path(out, command, stem or path.stem),
                 json.dumps({**_identity(path), "settings": key, "outputs": [str(o) for o in outputs]}, indent=1))


def remove_stale_outputs(out: Path, stem: str, outputs: Sequence[str], inputs: Sequence[Path], *,
                         command: str) -> list[str]:
    """The files the earlier run of this input recorded that this run did not write again (the polygons of a run
    with ``--vector``, the heatmap of another query) are removed from ``out``, so that nothing made with other
    settings looks current beside the new outputs. Returns those outside ``out`` (a ``--vector PATH``), which are
    left alone, to be reported; an input is never removed."""
    try:
        before = json.loads(record_path(out, command, stem).read_text()).get("outputs", [])
    except (OSError, ValueError, AttributeError):
        return []
    now = {Path(o).resolve() for o in outputs}
    root, elsewhere = out.resolve(), []
    for old in map(Path, before):
        if old.resolve() in now or not old.is_file() or any(same_file(old, p) for p in inputs):
            continue
        if root in old.resolve().parents:
            old.unlink(missing_ok=True)
        else:
            elsewhere.append(str(old))
    return elsewhere


def checkpoint_identity(checkpoint) -> str:
    """A checkpoint in the settings fingerprint: its path and modification time (a retrained file redoes all)."""
    p = Path(str(checkpoint)) if checkpoint is not None else None
    return f"{p.resolve()}:{p.stat().st_mtime_ns}" if p is not None and p.is_file() else str(checkpoint)


def rank_prefix() -> str:
    """``[rank r] `` in front of a process's own lines when there are several."""
    rank, size = world()
    return f"[rank {rank}] " if size > 1 else ""


ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None = None, actors: int | None = None, device: str = "auto") -> None:
    """Refuse, before any work, an engine that is not one, Ray's options without Ray, Ray under torchrun, a device
    Ray cannot honour, and Ray where it is not installed."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: choose local (this process, or torchrun's) or ray")
    if engine == "local" and (address is not None or actors is not None):
        raise UsageError("--address and --actors choose a Ray cluster and its actors: add --engine ray")
    if actors is not None and actors < 1:
        raise UsageError(f"--actors {actors}: at least one model actor")
    if engine == "ray":
        if launched():
            raise UsageError("--engine ray under torchrun: start the command once, without torchrun (Ray places "
                             "the work)")
        if device not in ("auto", "cuda", "cpu"):
            raise UsageError(f"--device {device} with --engine ray: Ray gives each actor its GPU; use --device "
                             "cuda, cpu or auto")
        from .ray_engine import ray_api

        ray_api()


def run_inputs(job: InputJob, paths: Sequence[Path], stems: Sequence[str], *, device: str = "auto",
               redo: bool = False, log: Log | None = print, engine: str = "local", address: str | None = None,
               actors: int | None = None) -> Run:
    """Run ``job`` over ``paths`` (their output stems ``stems``) on this process or, under torchrun, on every
    process (joining the group for the run when it was not joined, and leaving it after); with ``engine="ray"``,
    on the model actors of a Ray cluster (``address``; default ``RAY_ADDRESS``, else a Ray started here), see
    :mod:`farslip.infer.ray_engine`. See the module's description. The returned :class:`Run` is the same on
    every rank."""
    check_engine(engine, address, actors, device)
    if engine == "ray":
        from .ray_engine import run_on_ray

        return run_on_ray(job, list(paths), list(stems), device=device, redo=redo, log=log, address=address,
                          actors=actors)
    with job_ranks(device) as device:
        return _run_on_ranks(job, list(paths), list(stems), device, redo, log)


def skip_complete(job: InputJob, paths: Sequence[Path], stems: Sequence[str], indexes: Sequence[int], key: str,
                  redo: bool, rank: int = 0) -> tuple[list[Outcome], list[tuple[int, Any]], list[int]]:
    """The outcomes and results (``(index, result)``) of the inputs among ``indexes`` completed before with the
    settings ``key``, and the indexes still to do."""
    outcomes, results, todo = [], [], []
    for i in indexes:
        if not redo and is_complete(job.out, paths[i], key, stems[i], command=job.command):
            outcomes.append(Outcome(str(paths[i]), "complete", rank))
            results.append((i, job.recall(paths[i], stems[i])))
        else:
            todo.append(i)
    return outcomes, results, todo


def _run_on_ranks(job: InputJob, paths: list[Path], stems: list[str], device: str, redo: bool,
                  log: Log | None) -> Run:
    rank, size = world()
    single = len(paths) == 1 and size == 1  # nothing else to go on with: its error is the command's
    key = settings_key(job.settings())
    t0 = time.perf_counter()
    outcomes, results, todo = skip_complete(job, paths, stems, deal(paths, rank, size), key, redo, rank)
    worker = job.load(device) if todo else None  # a bad checkpoint is the command's error, not each input's
    for i in todo:
        path, stem = paths[i], stems[i]
        start = time.perf_counter()
        try:
            done = job.one(worker, path, stem)
        except (FarslipError, OSError, ValueError) as exc:
            if single:
                raise
            if log:
                log(f"{rank_prefix()}{path}: FAILED -- {exc}")
            outcomes.append(Outcome(str(path), "failed", rank, error=str(exc)))
            continue
        for left in remove_stale_outputs(job.out, stem, done.outputs, paths, command=job.command):
            if log:
                log(f"{rank_prefix()}{path}: {left} is from an earlier run with other settings (outside "
                    f"{job.out}: left in place)")
        mark_complete(job.out, path, key, done.outputs, stem, command=job.command)
        if log:
            for line in job.describe(done.result):
                log(rank_prefix() + line)
        outcomes.append(Outcome(str(path), "done", rank, round(time.perf_counter() - start, 3), done.pixels,
                                done.outputs))
        results.append((i, done.result))
    parts = gather((outcomes, results))
    return finish_run(job, paths, [o for part, _ in parts for o in part], [r for _, rs in parts for r in rs],
                      size, time.perf_counter() - t0)


def finish_run(job: InputJob, paths: Sequence[Path], outcomes: Sequence[Outcome], results: Sequence[tuple[int, Any]],
               processes: int, seconds: float, engine: str = "local") -> Run:
    """Every input's outcome and result, in input order; the failures and the run's record written once (by
    rank 0)."""
    order = {str(p): i for i, p in enumerate(paths)}
    every = sorted(outcomes, key=lambda o: order[o.input])
    done = sorted((r for r in results if r[1] is not None), key=lambda ir: ir[0])
    run = Run(job.command, [r for _, r in done], every, processes, seconds,
              job.out / DONE_DIR / f"{job.command}-run.json", world()[0], engine)
    if run.rank == 0:
        report_failures(job.out, every)
        atomic_write(run.record, json.dumps(run.summary(), indent=1))
    return run


def report_failures(out: Path, outcomes: Sequence[Outcome]) -> None:
    """Failed inputs go to ``OUT/problems.jsonl`` in the one bad-input format (:class:`~farslip.core.Problem`)."""
    failed = [Problem("failed-input", o.input, o.error or "failed") for o in outcomes if o.status == "failed"]
    if failed:
        Path(out).mkdir(parents=True, exist_ok=True)
        append_problems(Path(out) / "problems.jsonl", failed)
