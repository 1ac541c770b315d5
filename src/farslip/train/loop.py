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
from torch import nn
from tqdm.auto import tqdm

from ..core.errors import FarslipError, UsageError
from ..core.files import atomic_write
from ..core.problems import append_problems
from ..data.device_views import materialise
from ..data.loader import LoaderConfig, TrainLoader
from ..data.views import ViewConfig
from ..models.checkpoint_io import META_KEY
from ..models.hub import ensure_pretrained
from ..models.loading import get_tokenizer, load_model, save_model
from ..models.precision import TRAINING_PRECISION, autocast_for
from ..models.long_text import LONG_CONTEXT, extend_text_context, freeze_leading_text_rows, restore_frozen_rows
from ..objectives import FarSLIPObjective, make_teacher, update_ema
from ..core import distributed
from . import sharding
from .accumulation import accumulate_gradients
from .checkpoint import checkpoint_path, load_training_checkpoint, rank_states, rng_state, save_training_checkpoint
from .checks import check_config
from .config import TrainConfig
from .optim import build_optimizer, cosine_lr, set_lr
from .resume import restore_position, review_resume
from .rundir import RunStart, RunStartError, plan_start, refuse_run_over_inputs, take_folder
from .tensorboard import open_writer

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
          overwrite: bool = False, resume_changed: bool = False) -> dict:
    """Run the training job ``cfg``. ``resume``: None, ``"auto"`` (newest intact checkpoint of the run recorded in
    ``run.out``) or a checkpoint path; ``validate`` (optional) is called every ``run.val_every`` steps and its
    metrics are logged as ``val/...``; ``overwrite`` lets a fresh start replace another run in ``run.out``;
    ``resume_changed`` accepts a checkpoint made with another config (else refused, the differences listed).

    The whole config is checked, the job built (weights, data, optimiser) and only then is anything written:
    a mistake ends in one line and leaves no run folder behind."""
    check_config(cfg)
    warn_if_validation_is_lost(cfg, validate)
    ctx = distributed.join(cfg.run.device)
    start = start_run(cfg, ctx, resume, overwrite, resume_changed)
    job = build_job(cfg, ctx, start.state)
    progress = restore_progress(start, job, ctx, cfg)
    fit_schedule(cfg, job, progress)
    commit_run(cfg, ctx, start, overwrite)
    log = RunLog(Path(cfg.run.out), cfg, ctx, resume_step=start.step)
    end = min(job.last_step, cfg.run.stop_after) if cfg.run.stop_after else job.last_step
    bar = tqdm(total=end, initial=progress.step, disable=not (ctx.is_main and cfg.run.progress),
               desc=cfg.name, unit="step", dynamic_ncols=True)
    stop = StopOnSigterm()
    try:
        while progress.step < end:
            steps_before = progress.step
            for batch in job.loader.epoch(progress.epoch):
                lr = cosine_lr(progress.step, cfg.optim.lr, cfg.optim.warmup, job.last_step)
                losses = optimisation_step(job, _to_device(batch, ctx.device), lr, cfg.optim.grad_clip)
                progress.count(batch)
                log.hold_skipped(batch, progress.step)
                step = progress.step
                if step % cfg.run.log_every == 0 or step == end:
                    log_step(cfg, ctx, job, log, progress, losses, lr, bar)
                if validate is not None and cfg.run.val_every and step % cfg.run.val_every == 0:
                    run_validation(validate, job, ctx, log, step)
                if step % cfg.run.save_every == 0 and step != end:
                    save_checkpoint(cfg, ctx, job, log, progress, start.run_id)
                bar.update(1)
                if stop.agreed(ctx) and step < end:
                    stop_at_step(cfg, ctx, job, log, progress, start.run_id)
                if step >= end:
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
    if progress.step < job.last_step:  # run.stop_after
        return pause_run(ctx, job, log, progress)
    return finish_run(cfg, ctx, job, log, progress)


# -- starting: the run folder, the model and its companions, the progress -------------------------------------------

def warn_if_validation_is_lost(cfg: TrainConfig, validate: Validator | None) -> None:
    if validate is None and cfg.run.val_csv and cfg.run.val_every:
        warnings.warn("run.val_csv is set but train() was handed no validator, so nothing is validated; pass "
                      "validate=farslip.eval.validation.retrieval_validator(cfg.run.val_csv, cfg.run.val_image_root) "
                      "(the farslip train command does)", stacklevel=3)


def start_run(cfg: TrainConfig, ctx: distributed.Dist, resume: str | None, overwrite: bool,
              resume_changed: bool) -> RunStart:
    """Rank 0 decides how the run starts -- or refuses: the folder holds another run, the checkpoint was made with
    another config -- and every rank follows it. Nothing is written yet (:func:`commit_run`)."""
    decision = None
    if ctx.is_main:
        try:
            refuse_run_over_inputs(Path(cfg.run.out), [cfg.model.pretrained, cfg.data.train, cfg.data.image_root,
                                                       cfg.run.val_csv, cfg.run.val_image_root])
            start = plan_start(Path(cfg.run.out), resume, overwrite)
            if start.state is not None:
                start.review = review_resume(start.state.get("config"), cfg.to_dict(), len(rank_states(start.state)),
                                             ctx.world, resume_changed, start.checkpoint)
                for line in start.review.lines():
                    print(f"[farslip] resuming with {line}")
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


def commit_run(cfg: TrainConfig, ctx: distributed.Dist, start: RunStart, overwrite: bool) -> None:
    """The job is built: rank 0 now takes the folder (:func:`~farslip.train.rundir.take_folder`); every rank
    waits for it."""
    failure = None
    if ctx.is_main:
        try:
            take_folder(Path(cfg.run.out), start, cfg.name, cfg.to_dict(), overwrite)
        except Exception as exc:
            failure = exc
    if distributed.broadcast(None if failure is None else str(failure)) is not None:
        if failure is not None:
            raise failure
        raise RunStartError("rank 0 could not write the run folder")


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
    accum_steps: int = 1
    total_steps: int = 0  # the data's steps from the start of the run (fit_schedule)
    last_step: int = 0    # the run's last step: total_steps, or optim.max_steps if fewer; the schedule spans it
    sharded: bool = False  # optim.fsdp: FSDP2 units, sharded checkpoints (train/sharding.py)


def build_job(cfg: TrainConfig, ctx: distributed.Dist, state: dict | None) -> Job:
    """Model, objective, teacher, data and optimiser, with the checkpoint's weights and optimiser state if resuming."""
    torch.manual_seed(cfg.run.seed + ctx.rank)
    model, preprocess, tokenizer = build_model(cfg, state)
    if ctx.is_main:
        print(f"[farslip] model {model.farslip_arch} with {'QuickGELU' if model.farslip_quick_gelu else 'GELU'} "
              f"({'model.quick_gelu' if cfg.model.quick_gelu is not None else 'as its weights were trained'})")
    sharded_state = state is not None and bool(state.get("sharded"))
    if state is not None and sharded_state != cfg.optim.fsdp:
        raise UsageError(f"the checkpoint was written {'with' if sharded_state else 'without'} optim.fsdp; resume "
                         f"with optim.fsdp: {str(sharded_state).lower()}")
    if state is not None and not sharded_state:
        model.load_state_dict(state["state_dict"])
        if model.context_length == LONG_CONTEXT:
            freeze_leading_text_rows(model)  # the frozen rows are the checkpoint's, not the fresh model's
    model.to(ctx.device).train()
    objective = build_objective(cfg.objective)
    teacher = make_teacher(model) if objective.needs_teacher else None
    loader = build_loader(cfg, model, tokenizer, ctx)
    o = cfg.optim
    mode = autocast_mode(o.precision)
    step_module = wrap_step_module(TrainStep(model, objective), cfg, ctx, mode)  # FSDP shards before the optimiser
    optimizer = build_optimizer(model, o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps)
    scaler = torch.amp.GradScaler(ctx.device.type) if mode == "fp16" else None
    if sharded_state:
        sharding.load(Path(state["sharded"]), model, optimizer)
    elif state is not None:
        if teacher is not None and state.get("teacher"):
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    if o.fsdp and model.context_length == LONG_CONTEXT:
        freeze_leading_text_rows(model)  # the sharded parameter is a new one (and holds the checkpoint's rows)
    return Job(model, objective, teacher, step_module, optimizer, scaler,
               lambda: autocast_for(ctx.device, mode, training=True), loader, tokenizer, preprocess, o.accum_steps,
               sharded=o.fsdp)


def fit_schedule(cfg: TrainConfig, job: Job, progress: "Progress") -> None:
    """The run's length: the steps of its epochs (counted from where the data stands, so an elastic resume's
    re-dealt epoch counts what is left of it) or ``optim.max_steps`` if fewer; the cosine schedule spans it."""
    job.total_steps = progress.step + job.loader.steps_left(cfg.optim.epochs)
    job.last_step = min(job.total_steps, cfg.optim.max_steps) if cfg.optim.max_steps else job.total_steps


class TrainStep(nn.Module):
    """Model + objective as one module, so DistributedDataParallel wraps the whole step's forward."""

    def __init__(self, model: nn.Module, objective: FarSLIPObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict, teacher: nn.Module | None = None) -> dict:
        return self.objective(self.model, batch, teacher=teacher)


def wrap_step_module(step: TrainStep, cfg: TrainConfig, ctx: distributed.Dist, mode: str) -> nn.Module:
    if cfg.optim.fsdp:
        sharding.check_settings(mode, step.objective.target, cfg.optim.compile)
        step = sharding.shard(step, step.model, ctx.device, mode)
    elif ctx.world > 1:
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


def build_model(cfg: TrainConfig, state: dict | None):
    """The model to train: from ``model.pretrained`` (fetched first, so a missing download is one line), or --
    resuming -- built as the checkpoint records it (its activation unless the config names one), to be given its
    weights."""
    m = cfg.model
    if state is None:
        ensure_pretrained(m.arch, m.pretrained)
        model, _, preprocess_eval, tokenizer = load_model(m.arch, m.pretrained, quick_gelu=m.quick_gelu)
    else:
        meta = state[META_KEY]
        quick_gelu = meta.get("quick_gelu") if m.quick_gelu is None else m.quick_gelu
        model, _, preprocess_eval, tokenizer = load_model(meta.get("arch") or m.arch, None, quick_gelu=quick_gelu,
                                                          context_length=LONG_CONTEXT if m.long_text else None)
    if m.long_text and model.context_length != LONG_CONTEXT:
        extend_text_context(model, LONG_CONTEXT)
        tokenizer = get_tokenizer(model.farslip_arch, LONG_CONTEXT)
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
                       views, tokenizer, cfg.optim.batch_size * cfg.optim.accum_steps, ctx.rank, ctx.world, cfg.run.seed)


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


def restore_progress(start: RunStart, job: Job, ctx: distributed.Dist, cfg: TrainConfig) -> Progress:
    """The checkpoint's step, with this rank's own place in the data and RNG states (both set here; another number
    of processes re-deals the rest of the epoch: :func:`~farslip.train.resume.restore_position`)."""
    if start.state is None:
        return Progress(0, job.loader)
    restore_position(start.state, job.loader, ctx, cfg)
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
    losses = accumulate_gradients(job.step_module, batch, teacher, job.autocast, scaler, job.accum_steps)
    if job.sharded:
        sharding.after_backward(model)
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
    bound = logit_scale_bound(job)
    with torch.no_grad():
        model.logit_scale.clamp_(0, bound)
        if ema:
            teacher.logit_scale.clamp_(0, bound)
    return losses


def logit_scale_bound(job: Job) -> float:
    """The largest log logit scale: open_clip_train's log(100) with CLIP's softmax loss; none with SigLIP's sigmoid
    loss, as SigLIP's own code has none (big_vision models/proj/image_text/two_towers.py: ``t = exp(t')``) -- a
    pretrained SigLIP's scale may already be past 100, and the clamp would move it at the first step."""
    return math.inf if job.objective.global_loss_for(job.model) == "sigmoid" else MAX_LOGIT_SCALE


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
            self.tb = open_writer(run_dir / "tensorboard", resume_step)
        if cfg.run.wandb:
            import wandb  # optional dependency (pip install 'farslip[wandb]'), checked before the run starts

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
    samples_per_step = cfg.optim.batch_size * cfg.optim.accum_steps * ctx.world
    entry = {"step": progress.step, "epoch": progress.step_epoch, "lr": lr,
             "logit_scale": sharding.full(job.model.logit_scale).exp().item(),
             **({"logit_bias": sharding.full(job.model.logit_bias).item()}
                if getattr(job.model, "logit_bias", None) is not None else {}),
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
    with torch.no_grad(), torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []), \
            sharding.gathered(job.step_module, job.sharded):
        metrics = validate(job.model, job.tokenizer, job.preprocess, step)
    job.model.train()
    log.step({"step": step, **{f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}})


def save_checkpoint(cfg: TrainConfig, ctx: distributed.Dist, job: Job, log: RunLog, progress: Progress,
                    run_id: str) -> None:
    """``step_N.pt`` with every rank's own state (gathered: all ranks call this at the same step)."""
    log.write_skipped()  # a resume from here keeps exactly the skipped records up to here
    ranks = distributed.gather(progress.own())
    path = checkpoint_path(Path(cfg.run.out), progress.step)
    shards = sharding.save(path.with_suffix(".dcp"), job.model, job.optimizer) if job.sharded else None
    if ctx.is_main:
        save_training_checkpoint(Path(cfg.run.out), job.model, optimizer=job.optimizer, scaler=job.scaler,
                                 teacher=job.teacher, progress=progress.shared(), ranks=ranks, run_id=run_id,
                                 config=cfg.to_dict(), keep_last=cfg.run.keep_last, sharded=shards)


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


def pause_run(ctx: distributed.Dist, job: Job, log: RunLog, progress: Progress) -> dict:
    """``run.stop_after`` reached: the checkpoint of the step is written and the run is not finished (no final
    model); ``--resume auto`` continues it on the full run's schedule."""
    ranks = distributed.gather((progress.skipped, progress.notes))
    if ctx.is_main:
        print(f"[farslip] paused after step {progress.step} of {job.last_step} (run.stop_after); --resume auto "
              "continues the run")
    log.close()
    distributed.leave()
    return {"steps": progress.step, "paused": True, "skipped_records": sum(r[0] for r in ranks),
            "object_fixes": sum(r[1] for r in ranks), "run_dir": str(log.run_dir)}


def finish_run(cfg: TrainConfig, ctx: distributed.Dist, job: Job, log: RunLog, progress: Progress) -> dict:
    """The final model and summary (counts over all ranks), then the process group goes down."""
    run_dir = Path(cfg.run.out)
    ranks = distributed.gather((progress.skipped, progress.notes))
    skipped, notes = sum(r[0] for r in ranks), sum(r[1] for r in ranks)
    summary = {"steps": progress.step, "skipped_records": skipped, "object_fixes": notes,
               "final_model": str(run_dir / "final.pt")}
    state = sharding.full_state_dict(job.model) if job.sharded else None  # gathered by every rank
    if ctx.is_main:
        save_model(job.model, run_dir / "final.pt", state_dict=state)
        atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2))
        if skipped or notes:
            print(f"[farslip] skipped {skipped} unusable records and fixed or dropped {notes} objects; details in "
                  f"{log.skip_path}")
    log.close()
    distributed.leave()
    return {"steps": progress.step, "skipped_records": skipped, "object_fixes": notes, "run_dir": str(run_dir)}
