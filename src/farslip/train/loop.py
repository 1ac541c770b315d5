"""The training loop, in nanoGPT's shape: ``train`` reads top to bottom on one screen, and each thing it does that
is not the loop itself (start the run, build the job, log, validate, checkpoint, finish) is a helper named for it.

Several processes (torchrun) run the same code. Every rank takes the same steps, so every collective (the
gradient all-reduce, the gathers at log and checkpoint steps, validation's) is reached by all of them at the same
step; nothing a single rank does alone ever enters one.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..core.errors import FarslipError
from ..core.files import atomic_write
from ..core.problems import append_problems
from ..data.device_views import materialise
from ..data.loader import LoaderConfig, TrainLoader
from ..data.views import ViewConfig
from ..models.loading import load_model, save_model
from ..models.precision import TRAINING_PRECISION, autocast_for
from ..models.long_text import LONG_CONTEXT, extend_text_context, freeze_leading_text_rows, restore_frozen_rows
from ..objectives import FarSLIPObjective, make_teacher, update_ema
from ..core import distributed
from .checkpoint import load_training_checkpoint, rank_state, rng_state, save_training_checkpoint, set_rng_state
from .config import TrainConfig
from .optim import build_optimizer, cosine_lr, set_lr
from .rundir import RunStart, RunStartError, clear_run, plan_start, record_run, refuse_run_over_inputs

TENSOR_KEYS = ("images", "texts", "crop_images", "crop_boxes", "region_images", "region_boxes", "region_texts",
               "region_labels", "region_valid")
MAX_LOGIT_SCALE = math.log(100)

#: A validation handed to the loop: ``validate(model, tokenizer, preprocess_eval, step) -> {metric: value}``, called
#: every ``run.val_every`` steps on every rank with the plain model in eval mode, under no_grad (see run_validation).
#: The loop never imports the evaluation room; ``farslip train`` hands it
#: ``farslip.eval.validation.retrieval_validator`` when ``run.val_csv`` is set.
Validator = Callable[[nn.Module, object, object, int], dict]


class BadDataError(FarslipError, RuntimeError):
    """The training data gives no usable batch, or more unusable records than the run allows."""


def train(cfg: TrainConfig, resume: str | None = None, *, validate: Validator | None = None,
          overwrite: bool = False) -> dict:
    """Run the training job ``cfg``. ``resume``: None, ``"auto"`` (newest intact checkpoint of the run recorded in
    ``run.out``) or a checkpoint path; ``validate`` (optional) is called every ``run.val_every`` steps and its
    metrics are logged as ``val/...``; ``overwrite`` lets a fresh start replace another run in ``run.out``."""
    warn_if_validation_is_lost(cfg, validate)
    ctx = distributed.join(cfg.run.device)
    start = start_run(cfg, ctx, resume, overwrite)
    job = build_job(cfg, ctx, start.state)
    progress = restore_progress(start, job, ctx)
    log = RunLog(Path(cfg.run.out), cfg, ctx, resume_step=start.step)
    bar = tqdm(total=job.last_step, initial=progress.step, disable=not (ctx.is_main and cfg.run.progress),
               desc=cfg.name, unit="step", dynamic_ncols=True)
    stop = StopOnSigterm()
    try:
        while progress.step < job.last_step:
            steps_before = progress.step
            for batch in job.loader.epoch(progress.epoch):
                lr = cosine_lr(progress.step, cfg.optim.lr, cfg.optim.warmup, job.total_steps)
                losses = optimisation_step(job, _to_device(batch, ctx.device), lr, cfg.optim.grad_clip)
                progress.count(batch)
                log.hold_skipped(batch, progress.step)
                step = progress.step
                if step % cfg.run.log_every == 0 or step == job.last_step:
                    log_step(cfg, ctx, job, log, progress, losses, lr, bar)
                if validate is not None and cfg.run.val_every and step % cfg.run.val_every == 0:
                    run_validation(validate, job, ctx, log, step)
                if step % cfg.run.save_every == 0 and step != job.last_step:
                    save_checkpoint(cfg, ctx, job, log, progress, start.run_id)
                bar.update(1)
                if stop.agreed(ctx) and step < job.last_step:
                    stop_at_step(cfg, ctx, job, log, progress, start.run_id)
                if step >= job.last_step:
                    break
            if progress.step == steps_before:
                raise BadDataError(f"epoch {progress.epoch} produced no batch: no usable record in {cfg.data.train}")
    except KeyboardInterrupt:
        save_on_interrupt(cfg, ctx, job, log, progress, start.run_id)
        raise
    finally:
        stop.restore()
        bar.close()
    save_checkpoint(cfg, ctx, job, log, progress, start.run_id)
    return finish_run(cfg, ctx, job, log, progress)


# -- starting: the run folder, the model and its companions, the progress -------------------------------------------

def warn_if_validation_is_lost(cfg: TrainConfig, validate: Validator | None) -> None:
    if validate is None and cfg.run.val_csv and cfg.run.val_every:
        warnings.warn("run.val_csv is set but train() was handed no validator, so nothing is validated; pass "
                      "validate=farslip.eval.validation.retrieval_validator(cfg.run.val_csv, cfg.run.val_image_root) "
                      "(the farslip train command does)", stacklevel=3)


def start_run(cfg: TrainConfig, ctx: distributed.Dist, resume: str | None, overwrite: bool) -> RunStart:
    """Rank 0 decides how the run starts (or refuses: the folder holds another run); every rank follows it."""
    run_dir = Path(cfg.run.out)
    decision = None
    if ctx.is_main:
        try:
            refuse_run_over_inputs(run_dir, [cfg.model.pretrained, cfg.data.train, cfg.data.image_root,
                                             cfg.run.val_csv, cfg.run.val_image_root])
            start = plan_start(run_dir, resume, overwrite)
            if overwrite:
                clear_run(run_dir)
            record_run(run_dir, start.run_id, cfg.name)
            atomic_write(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        except Exception as exc:
            distributed.broadcast({"error": str(exc)})  # the other ranks stop too, instead of waiting
            raise
        decision = {"run_id": start.run_id, "checkpoint": str(start.checkpoint) if start.checkpoint else None}
    decision = distributed.broadcast(decision)
    if "error" in decision:
        raise RunStartError(f"rank 0 could not start the run: {decision['error']}")
    if ctx.is_main:
        return start
    path = Path(decision["checkpoint"]) if decision["checkpoint"] else None
    return RunStart(decision["run_id"], path, load_training_checkpoint(path) if path else None)


@dataclass
class Job:
    """What a step works with, built once: model (and the DDP/compiled module that steps it), data, optimiser."""
    model: nn.Module
    objective: FarSLIPObjective
    teacher: nn.Module | None
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable
    loader: TrainLoader
    tokenizer: Callable
    preprocess: Callable  # the model's evaluation transform, for validation
    total_steps: int
    last_step: int


def build_job(cfg: TrainConfig, ctx: distributed.Dist, state: dict | None) -> Job:
    """Model, objective, teacher, data and optimiser, with the checkpoint's weights and optimiser state if resuming."""
    torch.manual_seed(cfg.run.seed + ctx.rank)
    model, preprocess, tokenizer = build_model(cfg, resuming=state is not None)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        if model.context_length == LONG_CONTEXT:
            freeze_leading_text_rows(model)  # the frozen rows are the checkpoint's, not the fresh model's
    model.to(ctx.device).train()
    objective = build_objective(cfg.objective)
    teacher = make_teacher(model) if objective.needs_teacher else None
    loader = build_loader(cfg, model, tokenizer, ctx)
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps)
    mode = autocast_mode(o.precision)
    scaler = torch.amp.GradScaler(ctx.device.type) if mode == "fp16" else None
    if state is not None:
        if teacher is not None and state.get("teacher"):
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    total_steps = loader.steps_per_epoch * o.epochs
    return Job(model, objective, teacher, wrap_step_module(TrainStep(model, objective), cfg, ctx), optimizer, scaler,
               lambda: autocast_for(ctx.device, mode, training=True), loader, tokenizer, preprocess, total_steps,
               min(total_steps, o.max_steps) if o.max_steps else total_steps)


class TrainStep(nn.Module):
    """Model + objective as one module, so DistributedDataParallel wraps the whole step's forward."""

    def __init__(self, model: nn.Module, objective: FarSLIPObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict, teacher: nn.Module | None = None) -> dict:
        return self.objective(self.model, batch, teacher=teacher)


def wrap_step_module(step: TrainStep, cfg: TrainConfig, ctx: distributed.Dist) -> nn.Module:
    if ctx.world > 1:
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.optim.compile:  # compiles the forward (model + objective); checkpoints still hold the plain model
        step = torch.compile(step)
    return step


def build_objective(cfg) -> FarSLIPObjective:
    overrides = {k: v for k, v in vars(cfg).items() if k != "preset" and v is not None}
    presets = {"stage1": FarSLIPObjective.stage1, "stage2": FarSLIPObjective.stage2, "vanilla": FarSLIPObjective}
    if cfg.preset not in presets:
        raise ValueError(f"objective.preset must be one of {sorted(presets)}, got {cfg.preset!r}")
    return presets[cfg.preset](**overrides)


def build_model(cfg: TrainConfig, resuming: bool):
    m = cfg.model
    model, _, preprocess_eval, tokenizer = load_model(m.arch, None if resuming else m.pretrained,
                                                      quick_gelu=m.quick_gelu,
                                                      context_length=LONG_CONTEXT if (m.long_text and resuming) else None)
    if m.long_text and model.context_length != LONG_CONTEXT:
        extend_text_context(model, LONG_CONTEXT)
        import open_clip

        tokenizer = open_clip.get_tokenizer(model.farslip_arch, context_length=LONG_CONTEXT)
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model, preprocess_eval, tokenizer


def build_loader(cfg: TrainConfig, model: nn.Module, tokenizer, ctx) -> TrainLoader:
    """The recipe's data section, with the model's input size and normalisation."""
    d, visual = cfg.data, model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    views = ViewConfig(size=size, views=d.views, num_crops=d.num_crops, max_regions=d.max_regions, crop_scale=tuple(d.crop_scale),
                       crop_ratio=tuple(d.crop_ratio), min_region_size=d.min_region_size,
                       max_region_size=d.max_region_size,
                       mean=tuple(getattr(visual, "image_mean", None) or ViewConfig.mean),
                       std=tuple(getattr(visual, "image_std", None) or ViewConfig.std))
    return TrainLoader(LoaderConfig(d.kind, d.train, d.image_root, d.caption, d.image_key, d.caption_key,
                                    d.csv_sep, d.num_samples, d.workers, d.shuffle_buffer, d.shuffle_initial,
                                    d.views_on_device),
                       views, tokenizer, cfg.optim.batch_size, ctx.rank, ctx.world, cfg.run.seed)


def autocast_mode(precision: str) -> str:
    """``optim.precision`` -> the autocast mode of :func:`farslip.models.precision.autocast_for`."""
    if precision not in TRAINING_PRECISION:
        raise ValueError(f"optim.precision must be fp32, amp (fp16) or amp_bf16; got {precision!r}")
    return TRAINING_PRECISION[precision]


@dataclass
class Progress:
    """Where the run is: ``step``, the same on every rank, and the loader's place in the data, which is this rank's
    own (epoch, batch in epoch, each loader worker's cursor, skip counts: ``TrainLoader.state_dict``)."""
    step: int
    loader: TrainLoader
    step_epoch: int = 0  # the epoch the last step's batch came from (the loader may have moved on to the next)

    def count(self, batch: dict) -> None:
        self.step, self.step_epoch = self.step + 1, self.epoch
        self.loader.advance(batch)

    @property
    def epoch(self) -> int:
        return self.loader.state_dict()["epoch"]

    @property
    def skipped(self) -> int:
        return self.loader.skipped_records

    @property
    def notes(self) -> int:
        return self.loader.object_fixes

    def shared(self) -> dict:
        data = self.loader.state_dict()
        return {"step": self.step, "epoch": data["epoch"], "batch_in_epoch": data["batch_in_epoch"]}

    def own(self) -> dict:
        return {"data": self.loader.state_dict(), "rng": rng_state()}


def restore_progress(start: RunStart, job: Job, ctx: distributed.Dist) -> Progress:
    """The checkpoint's step, with this rank's own place in the data and RNG states (both set here)."""
    if start.state is None:
        return Progress(0, job.loader)
    mine = rank_state(start.state, ctx.rank, ctx.world, start.checkpoint)
    job.loader.load_state_dict(mine["data"])
    set_rng_state(mine["rng"])
    return Progress(int(start.state["progress"]["step"]), job.loader)


# -- one step ---------------------------------------------------------------------------------------------------

def _to_device(batch: dict, device: torch.device) -> dict:
    if "pixels" in batch:  # data.views_on_device: the views are cut and resized here
        batch = materialise(batch, device)
    return {k: batch[k].to(device, non_blocking=True) for k in TENSOR_KEYS if k in batch}


def optimisation_step(job: Job, batch: dict, lr: float, grad_clip: float | None) -> dict:
    """Forward, backward, (EMA), clip, step; then the invariants: frozen text rows, logit-scale clamp."""
    model, teacher, optimizer, scaler = job.model, job.teacher, job.optimizer, job.scaler
    ema = teacher is not None and job.objective.target == "ema"
    set_lr(optimizer, lr)
    with job.autocast():
        losses = job.step_module(batch, teacher)
    (scaler.scale(losses["total"]) if scaler else losses["total"]).backward()
    if ema:
        update_ema(teacher, model, job.objective.ema_momentum)  # official order: before the optimiser step
    if scaler:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    restore_frozen_rows(model)
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if ema:
            teacher.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return losses


# -- logging, validation, checkpoints ----------------------------------------------------------------------------

class RunLog:
    """Rank 0 writes: per-step JSONL, TensorBoard scalars (and wandb if asked), skipped records of every rank.

    Resuming from step N drops what was logged after N (it is logged again); a fresh start begins empty files.
    """

    def __init__(self, run_dir: Path, cfg: TrainConfig, ctx: distributed.Dist, resume_step: int):
        self.ctx, self.run_dir = ctx, run_dir
        self.log_path, self.skip_path = run_dir / "log.jsonl", run_dir / "skipped.jsonl"
        self.pending: list[dict] = []  # this rank's skipped records since they were last written
        self.tb = self.wandb = None
        self.clock, self.clock_step = time.perf_counter(), resume_step
        if not ctx.is_main:
            return
        for path in (self.log_path, self.skip_path):
            _keep_lines_up_to(path, resume_step)
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                print("[farslip] tensorboard not installed; scalars go to log.jsonl only")
        if cfg.run.wandb:
            import wandb  # optional dependency: pip install wandb

            self.wandb = wandb.init(project="farslip", name=cfg.name, config=cfg.to_dict())

    def step(self, entry: dict) -> None:
        if not self.ctx.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.tb:
            for k, v in entry.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k if k.startswith("val/") else f"train/{k}", v, entry["step"])
        if self.wandb:
            self.wandb.log(entry, step=entry["step"])

    def hold_skipped(self, batch: dict, step: int) -> None:
        """Keep this batch's skipped records and object fixes (Problem dicts) with the step and rank that met them."""
        self.pending += [{**p, "step": step, "rank": self.ctx.rank} for p in batch["skipped"] + batch["notes"]]

    def write_skipped(self) -> None:
        """Every rank's held skipped records, written by rank 0 (a collective: all ranks call it at one step)."""
        gathered = distributed.gather(self.pending)
        self.pending = []
        lines = [r for rank_records in gathered for r in rank_records]
        if self.ctx.is_main:
            append_problems(self.skip_path, lines)

    def samples_per_s(self, step: int, samples_per_step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.clock_step) * samples_per_step / max(now - self.clock, 1e-9)
        self.clock, self.clock_step = now, step
        return rate

    def close(self):
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _keep_lines_up_to(path: Path, step: int) -> None:
    """Drop JSONL lines logged after ``step`` (all of them for a fresh start, step 0)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [ln for ln in lines if ln and json.loads(ln).get("step", 0) <= step] if step else []
    atomic_write(path, "".join(ln + "\n" for ln in keep))


def log_step(cfg: TrainConfig, ctx: distributed.Dist, job: Job, log: RunLog, progress: Progress, losses: dict,
             lr: float, bar) -> None:
    """One log line: rank 0's losses and every rank's total loss; skip counts over all ranks; the bad-data check."""
    log.write_skipped()
    ranks = distributed.gather({"total": losses["total"].item(), "skipped": progress.skipped,
                                "notes": progress.notes})
    skipped = sum(r["skipped"] for r in ranks)
    samples_per_step = cfg.optim.batch_size * ctx.world
    entry = {"step": progress.step, "epoch": progress.step_epoch, "lr": lr,
             "logit_scale": job.model.logit_scale.exp().item(),
             "samples_per_s": log.samples_per_s(progress.step, samples_per_step),
             **{k: v.item() for k, v in losses.items()}, "skipped": skipped}
    if ctx.world > 1:
        entry["total_by_rank"] = [r["total"] for r in ranks]
    log.step(entry)
    bar.set_postfix(loss=f"{entry['total']:.4f}", lr=f"{lr:.2e}", sps=f"{entry['samples_per_s']:.1f}", skipped=skipped)
    stop_on_bad_data(cfg, skipped, progress.step * samples_per_step + skipped, log.skip_path)


def stop_on_bad_data(cfg: TrainConfig, skipped: int, read: int, report: Path) -> None:
    d = cfg.data
    too_many = d.max_bad_samples is not None and skipped > d.max_bad_samples
    too_often = read >= 1000 and skipped / read > d.max_bad_fraction
    if too_many or too_often:
        raise BadDataError(
            f"stopping: {skipped} of {read} records were unusable (limits: data.max_bad_samples="
            f"{d.max_bad_samples}, data.max_bad_fraction={d.max_bad_fraction}); see {report}")


def run_validation(validate: Validator, job: Job, ctx: distributed.Dist, log: RunLog, step: int) -> None:
    """Every rank validates the plain model (not the DDP wrapper: no gradient collective runs inside), at the same
    step, so a validator that shares its work over ranks -- farslip's retrieval embeds a shard per rank and gathers
    the features -- has all of them in its collectives, and one that does not simply computes the same metrics on
    each. Rank 0 logs them. Validation draws no training randomness (forked RNG)."""
    job.model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        metrics = validate(job.model, job.tokenizer, job.preprocess, step)
    job.model.train()
    log.step({"step": step, **{f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}})


def save_checkpoint(cfg: TrainConfig, ctx: distributed.Dist, job: Job, log: RunLog, progress: Progress,
                    run_id: str) -> None:
    """``step_N.pt`` with every rank's own state (gathered: all ranks call this at the same step)."""
    log.write_skipped()  # a resume from here keeps exactly the skipped records up to here
    ranks = distributed.gather(progress.own())
    if ctx.is_main:
        save_training_checkpoint(Path(cfg.run.out), job.model, optimizer=job.optimizer, scaler=job.scaler,
                                 teacher=job.teacher, progress=progress.shared(), ranks=ranks, run_id=run_id,
                                 config=cfg.to_dict(), keep_last=cfg.run.keep_last)


def save_on_interrupt(cfg, ctx, job, log, progress, run_id) -> None:
    """Ctrl-C: one process writes a checkpoint to resume from. Several processes do not (each is interrupted at its
    own point of the step, so none can wait for the others); they resume from the last regular checkpoint."""
    if ctx.world == 1:
        print(f"\n[farslip] interrupted at step {progress.step}; writing a checkpoint to resume from")
        save_checkpoint(cfg, ctx, job, log, progress, run_id)
    elif ctx.is_main:
        print(f"\n[farslip] interrupted at step {progress.step}; --resume auto continues from the last checkpoint")


class StopOnSigterm:
    """SIGTERM (a scheduler's preemption notice, ``kill``, ``scancel``) asks the run to stop after the step in
    flight, with a checkpoint of that step, instead of ending the process mid-step with nothing saved."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame) -> None:
        if self.requested:  # a second SIGTERM: the step is not finishing, stop now (as without this handler)
            raise SystemExit(128 + signum)
        self.requested = True

    def agreed(self, ctx: distributed.Dist) -> bool:
        """Whether any rank was asked to stop. Every rank asks after every step, so all stop after the same one
        (a scheduler's signals reach the ranks at different moments)."""
        if ctx.world == 1:
            return self.requested
        return distributed.all_sum(int(self.requested)) > 0

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def stop_at_step(cfg, ctx, job, log, progress, run_id) -> None:
    """The checkpoint of the step just taken, then the exit status of a terminated process (128 + SIGTERM)."""
    if ctx.is_main:
        print(f"\n[farslip] SIGTERM: stopping after step {progress.step}; writing a checkpoint (--resume auto "
              f"continues from it)", flush=True)
    save_checkpoint(cfg, ctx, job, log, progress, run_id)
    log.close()
    distributed.leave()
    raise SystemExit(128 + signal.SIGTERM)


def finish_run(cfg: TrainConfig, ctx: distributed.Dist, job: Job, log: RunLog, progress: Progress) -> dict:
    """The final model and summary (counts over all ranks), then the process group goes down."""
    run_dir = Path(cfg.run.out)
    ranks = distributed.gather((progress.skipped, progress.notes))
    skipped, notes = sum(r[0] for r in ranks), sum(r[1] for r in ranks)
    summary = {"steps": progress.step, "skipped_records": skipped, "object_fixes": notes,
               "final_model": str(run_dir / "final.pt")}
    if ctx.is_main:
        save_model(job.model, run_dir / "final.pt")
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
        if skipped or notes:
            print(f"[farslip] skipped {skipped} unusable records and fixed or dropped {notes} objects; details in "
                  f"{log.skip_path}")
    log.close()
    distributed.leave()
    return {"steps": progress.step, "skipped_records": skipped, "object_fixes": notes, "run_dir": str(run_dir)}
