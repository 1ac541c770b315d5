"""The Ray engine (``--engine ray``): segment, locate, classify and search index over an archive on a Ray cluster, or
on a Ray started on this machine, with failures survived.

    farslip segment "archive/**/*.tif" --checkpoint model.pt --classes road water --out maps/ --engine ray
    farslip segment @scenes.txt ... --engine ray --address head-node:6379      # join a running cluster

The work still to do becomes a Ray dataset, one block per input (segment, locate: the largest input first) or per
encoder batch (classify, search index: the batches one process makes, so the numbers are that process's); a pool
of model actors -- one per GPU of the cluster, or one per CPU without GPUs (``actors``) -- takes the blocks as
each actor is free, so a slow node simply takes fewer. Each actor loads the model once, from the checkpoint, and
writes the outputs of the work it did through the job's own code (:mod:`farslip.infer.runner`), atomically; an
input's completion record ``OUT/.farslip-done/<stem>.json`` follows its outputs, as on one process, so a rerun of
the command skips what is complete, whichever engine made it. The driver (this process) shows one progress line
for the whole job, prints what each input gave, and writes the run's record and ``OUT/problems.jsonl``.

Failures: an actor whose process dies (killed, out of memory, a lost node) is restarted by Ray and the block it
held is tried again; a small actor of the run counts the tries, so a block that kills its worker every time is
reported as failed after :data:`TRIES` tries instead of being retried for ever. A try that finds the input already
complete (the try before finished it and died before answering) does not write it again; one that finds the
``.partial`` files of a try that died removes them. An input that cannot be read or written fails alone and is
reported; a bug (any other exception) stops the job, as on one process.

Inputs and outputs must be on a file system every node sees (the same paths everywhere), and farslip installed on
every node; the driver reads nothing but file sizes and completion records (and, for search index, the files'
digests). ``FARSLIP_TEST_KILL_ACTOR=<marker file>`` is a test hook: the first actor to reach its second block
creates the marker and kills its own process before answering (after the work, before the completion record).
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import pickle
import signal
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..core.errors import FarslipError, UsageError
from .runner import (InputJob, Log, Outcome, Run, finish_run, is_complete, mark_complete, record_path,
                     remove_stale_outputs, settings_key, skip_complete)

#: Tries of one input or batch before it is reported as failed (its worker died on each).
TRIES = 3
#: Shared memory of a Ray started here: the dataset holds paths and results, never pixels.
LOCAL_OBJECT_STORE = 512 * 2**20
KILL_HOOK = "FARSLIP_TEST_KILL_ACTOR"
INSTALL = "--engine ray needs Ray: pip install 'farslip[ray]'"


def ray_api():
    """The ``ray`` module (with Ray Data), or the one line that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of the ``ray[data]`` install
    except ImportError:
        raise UsageError(INSTALL) from None
    return ray


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[Any]:
    """Ray for one job: the Ray this process already joined (a notebook's, a test's, a Ray job's driver), else the
    cluster at ``address`` (or ``RAY_ADDRESS``), else a Ray started on this machine for the job and stopped after."""
    ray = ray_api()
    if ray.is_initialized():
        yield ray
        return
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if address:
        _reachable(address)
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             **({"object_store_memory": LOCAL_OBJECT_STORE} if local else {}))
    try:
        yield ray
    finally:
        ray.shutdown()


def _reachable(address: str) -> None:
    """A cluster's ``host:port`` answers, checked first: Ray itself waits minutes on a mistyped address."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # ray://, auto: Ray's own forms
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise FarslipError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                           "with `ray start --head`, or leave --address out for a Ray on this machine") from None


@dataclass
class Pool:
    """The model actors of a job and what each one asks of the cluster."""
    actors: int
    cpus: float
    gpus: float
    device: str                         # what each actor computes on: "cuda" (the GPU Ray gave it) or "cpu"


def plan_pool(resources: dict, device: str, actors: int | None, pieces: int) -> Pool:
    """One actor per GPU (``device`` auto or cuda, on a cluster with GPUs), else one per CPU; ``actors`` instead
    when given (several share a GPU, or the CPUs are shared out); never more actors than pieces of work.
    ``device``: auto, cuda or cpu (:func:`~farslip.infer.runner.check_engine`)."""
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if device == "cuda" and not gpus:
        raise UsageError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    on_gpu = gpus > 0 and device != "cpu"
    n = max(1, min(actors or int(gpus if on_gpu else cpus) or 1, pieces))
    if on_gpu:
        return Pool(n, 1.0, min(1.0, gpus / n), "cuda")
    return Pool(n, float(cpus // n) if cpus >= n else cpus / n, 0.0, "cpu")


class Tries:
    """How many times each piece of work was started in this run: kept outside the workers, which may die."""

    def __init__(self):
        self.started: dict[int, int] = {}

    def start(self, piece: int) -> int:
        self.started[piece] = self.started.get(piece, 0) + 1
        return self.started[piece]


def died(tries: int) -> str:
    return (f"the Ray worker running it died on each of {tries} tries (killed, out of memory, a lost node or a "
            "crash in a library); see the Ray log above")


class _Actor:
    """What the model actors share: their threads, the run's try counter and the test hook."""

    def __init__(self, pool: Pool, tries, kill_marker: str | None):
        import ray
        import torch

        if pool.device == "cpu":  # torch in a Ray worker starts with one thread, whatever CPUs the actor holds
            torch.set_num_threads(max(1, int(pool.cpus)))
        self.tries, self.kill_marker, self.calls = tries, kill_marker, 0
        self.name = f"{ray.util.get_node_ip_address()}/pid {os.getpid()}"

    def start(self, piece: int) -> int:
        """The try this is of ``piece`` (1: the first)."""
        import ray

        self.calls += 1
        return ray.get(self.tries.start.remote(piece))

    def test_hook(self) -> None:
        if self.kill_marker and self.calls == 2 and not os.path.exists(self.kill_marker):
            Path(self.kill_marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


def _packed(rows: list) -> dict:
    """Rows as one column of pickled objects (results are dataclasses, not Arrow values)."""
    column = np.empty(len(rows), dtype=object)
    column[:] = [pickle.dumps(r) for r in rows]
    return {"row": column}


class InputActor(_Actor):
    """One model of an input job (segment, locate): runs the inputs it is given, writes their outputs and records."""

    def __init__(self, job: InputJob, key: str, pool: Pool, tries, kill_marker: str | None):
        super().__init__(pool, tries, kill_marker)
        self.job, self.key = job, key
        self.worker = job.load(pool.device)

    def __call__(self, batch: dict) -> dict:
        return _packed([self.one(int(i), Path(p), str(s))
                        for i, p, s in zip(batch["index"], batch["path"], batch["stem"])])

    def one(self, i: int, path: Path, stem: str) -> tuple[int, Outcome, Any]:
        job, tries = self.job, self.start(i)
        if tries > TRIES:
            return i, Outcome(str(path), "failed", error=died(TRIES), tries=TRIES), None
        if tries > 1:
            if is_complete(job.out, path, self.key, stem, command=job.command):  # the try before finished it, then died
                return i, Outcome(str(path), "done", worker=self.name, tries=tries), job.recall(path, stem)
            clear_partials(job, stem)
        start = time.perf_counter()
        try:
            done = job.one(self.worker, path, stem)
        except (FarslipError, OSError, ValueError) as exc:
            return i, Outcome(str(path), "failed", error=str(exc), worker=self.name, tries=tries), None
        self.test_hook()
        remove_stale_outputs(job.out, stem, done.outputs, [path], command=job.command)  # outside OUT: left alone
        mark_complete(job.out, path, self.key, done.outputs, stem, command=job.command)
        return i, Outcome(str(path), "done", 0, round(time.perf_counter() - start, 3), done.pixels, done.outputs,
                          worker=self.name, tries=tries), done.result


def clear_partials(job: InputJob, stem: str) -> list[Path]:
    """Remove the ``.partial`` files a dead try left of this input's outputs and completion record."""
    finals = [*job.outputs(stem), record_path(job.out, job.command, stem)]
    found = [Path(f) for o in finals for f in glob.glob(str(o.parent / f".{glob.escape(o.name)}.*.partial"))]
    for f in found:
        f.unlink(missing_ok=True)
    return found


class BatchJob(Protocol):
    """A job over encoder batches (classify, search index): ``load(device)`` once per actor, then ``batch(worker,
    items)`` per batch, whose result goes back to the driver."""
    command: str

    def load(self, device: str) -> Any: ...

    def batch(self, worker: Any, items: list) -> Any: ...


class BatchActor(_Actor):
    """One model of a batch job: answers ``(batch number, result, error)`` per batch."""

    def __init__(self, job: BatchJob, pool: Pool, tries, kill_marker: str | None):
        super().__init__(pool, tries, kill_marker)
        self.job = job
        self.worker = job.load(pool.device)

    def __call__(self, batch: dict) -> dict:
        rows = []
        for b, items in zip(batch["batch"], batch["items"]):
            b = int(b)
            if self.start(b) > TRIES:
                rows.append((b, None, died(TRIES)))
                continue
            result = self.job.batch(self.worker, pickle.loads(items))
            self.test_hook()
            rows.append((b, result, None))
        return _packed(rows)


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's own progress bars and execution notes off for the job: its one line is the driver's."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _stream(ray, rows: list[dict], actor: type, args: tuple, pool: Pool, in_flight: int = 1) -> Iterator:
    """Run ``actor(*args, pool, tries, kill_marker)`` over ``rows`` (a block each) on the pool; each answer as it
    arrives."""
    tries = ray.remote(num_cpus=0)(Tries).options(scheduling_strategy=_this_node(ray)).remote()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        actor, batch_size=1, fn_constructor_args=(*args, pool, tries, os.environ.get(KILL_HOOK)),
        compute=ray.data.ActorPoolStrategy(size=pool.actors, max_tasks_in_flight_per_actor=in_flight),
        num_cpus=pool.cpus, num_gpus=pool.gpus or None)
    ds.context.enable_progress_bars = False
    with _quiet_ray_data():
        for row in ds.iter_rows():
            yield pickle.loads(row["row"])


def _this_node(ray):
    """Keep the try counter on the driver's node: if that node is lost, the job is lost anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


class JobProgress:
    """The one progress line of a job: inputs (or items) done of the total, Mpx/s where pixels are counted, ETA."""

    def __init__(self, command: str, total: int, done: int, enabled: bool, unit: str = "input"):
        self.bar = tqdm(total=total, initial=done, desc=f"{command} [ray]", unit=unit, disable=not enabled,
                        dynamic_ncols=True)
        self.start, self.pixels = time.perf_counter(), 0

    def advance(self, n: int = 1, pixels: int = 0) -> None:
        self.pixels += pixels
        if self.pixels:
            rate = self.pixels / 1e6 / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate:.3g} Mpx/s", refresh=False)
        self.bar.update(n)

    def write(self, log: Log | None, lines: Sequence[str]) -> None:
        """Lines printed above the bar (it is cleared and redrawn around them)."""
        if log and lines:
            with self.bar.external_write_mode():
                for line in lines:
                    log(line)

    def __enter__(self) -> "JobProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _quiet(job: InputJob) -> InputJob:
    """The job as the actors run it: without a progress bar per input (the driver shows one for the job)."""
    return replace(job, options=replace(job.options, progress=False))


def refuse_model_in_memory(command: str, model) -> None:
    """Each actor loads the model from the checkpoint: a caller's model object cannot go with the job."""
    if model is not None:
        raise UsageError(f"{command} --engine ray: each Ray actor loads the model from its checkpoint; pass "
                         "checkpoint=... instead of a model in memory")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def run_on_ray(job: InputJob, paths: list[Path], stems: list[str], *, device: str = "auto", redo: bool = False,
               log: Log | None = print, address: str | None = None, actors: int | None = None) -> Run:
    """:func:`~farslip.infer.runner.run_inputs` on Ray: the same inputs, outputs, records, problems and
    :class:`~farslip.infer.runner.Run` (``processes``: the model actors; ``engine``: ``"ray"``)."""
    refuse_model_in_memory(job.command, job.model)
    key = settings_key(job.settings())
    t0 = time.perf_counter()
    outcomes, results, todo = skip_complete(job, paths, stems, range(len(paths)), key, redo)
    actors_used = 0
    if todo:
        if redo:  # a try after a death must not take an older run's record for its own
            for i in todo:
                record_path(job.out, job.command, stems[i]).unlink(missing_ok=True)
        todo.sort(key=lambda i: -_size(paths[i]))  # the largest first: the last to finish are small
        rows = [{"index": i, "path": str(paths[i]), "stem": stems[i]} for i in todo]
        with connected(address) as ray:
            pool = plan_pool(ray.cluster_resources(), device, actors, len(rows))
            actors_used = pool.actors
            with JobProgress(job.command, len(paths), len(outcomes), job.options.progress) as progress:
                for i, outcome, result in _stream(ray, rows, InputActor, (_quiet(job), key), pool):
                    outcomes.append(outcome)
                    results.append((i, result))
                    progress.advance(pixels=outcome.pixels)
                    progress.write(log, _lines(job, outcome, result))
    if len(paths) == 1 and outcomes[0].status == "failed":
        raise FarslipError(outcomes[0].error or f"{paths[0]}: failed")  # as on one process: its error is the call's
    return finish_run(job, paths, outcomes, results, actors_used, time.perf_counter() - t0, "ray")


def _lines(job: InputJob, outcome: Outcome, result) -> list[str]:
    if outcome.status == "failed":
        return [f"{outcome.input}: FAILED -- {outcome.error}"]
    again = [f"   (try {outcome.tries}: a worker died on it before)"] if outcome.tries > 1 else []
    return (job.describe(result) if result is not None else [f"{outcome.input}: done"]) + again


def run_batches_on_ray(job: BatchJob, batches: Sequence[list], *, device: str = "auto", address: str | None = None,
                       actors: int | None = None, progress: bool = True, unit: str = "image") -> tuple[list, int]:
    """Each batch's ``(result, error)`` in batch order (error: the batch's worker died on each try), and the number
    of actors that ran them. The job loads its model from a checkpoint (the caller checks)."""
    answers: list = [(None, None)] * len(batches)
    if not batches:
        return answers, 0
    rows = [{"batch": b, "items": pickle.dumps(items)} for b, items in enumerate(batches)]
    with connected(address) as ray:
        pool = plan_pool(ray.cluster_resources(), device, actors, len(rows))
        with JobProgress(job.command, sum(len(b) for b in batches), 0, progress, unit) as bar:
            for b, result, error in _stream(ray, rows, BatchActor, (job,), pool, in_flight=2):
                answers[b] = (result, error)
                bar.advance(len(batches[b]))
    return answers, pool.actors
