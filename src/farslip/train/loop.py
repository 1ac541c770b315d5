"""The training loop. Everything that is not the loop itself lives in a helper with a name that says what it does."""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.problems import append_problems
from ..data.loader import LoaderConfig, TrainLoader
from ..data.views import ViewConfig
from ..models.loading import load_model
from ..models.precision import TRAINING_PRECISION, autocast_for
from ..models.long_text import LONG_CONTEXT, extend_text_context, freeze_leading_text_rows, restore_frozen_rows
from ..objectives import FarSLIPObjective, make_teacher, update_ema
from . import distributed
from .checkpoint import (load_training_checkpoint, newest_intact, save_training_checkpoint, set_rng_state)
from .config import TrainConfig
from .optim import build_optimizer, cosine_lr, set_lr

TENSOR_KEYS = ("images", "texts", "crop_images", "crop_boxes", "region_images", "region_boxes", "region_texts",
               "region_labels", "region_valid")
MAX_LOGIT_SCALE = math.log(100)


class TrainStep(nn.Module):
    """Model + objective as one module, so DistributedDataParallel wraps the whole step's forward."""

    def __init__(self, model: nn.Module, objective: FarSLIPObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict, teacher: nn.Module | None = None) -> dict:
        return self.objective(self.model, batch, teacher=teacher)


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


def autocast_mode(precision: str) -> str:
    """``optim.precision`` -> the autocast mode of :func:`farslip.models.precision.autocast_for`."""
    if precision not in TRAINING_PRECISION:
        raise ValueError(f"optim.precision must be fp32, amp (fp16) or amp_bf16; got {precision!r}")
    return TRAINING_PRECISION[precision]


class RunLog:
    """Per-step JSONL, TensorBoard scalars (and wandb if asked), and the skipped-records report."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, active: bool, resume_step: int | None):
        self.active, self.run_dir = active, run_dir
        self.tb = self.wandb = None
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path, self.skip_path = run_dir / "log.jsonl", run_dir / "skipped.jsonl"
        if resume_step is not None:  # drop lines logged after the checkpoint we resume from
            for path in (self.log_path,):
                if path.exists():
                    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
                    path.write_text("".join(ln + "\n" for ln in keep))
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("[farslip] tensorboard not installed; scalars go to log.jsonl only")
        if cfg.run.wandb:
            import wandb  # optional dependency: pip install wandb

            self.wandb = wandb.init(project="farslip", name=cfg.name, config=cfg.to_dict())

    def step(self, entry: dict) -> None:
        if not self.active:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        for k, v in entry.items():
            if isinstance(v, (int, float)) and k != "step":
                if self.tb:
                    self.tb.add_scalar(f"train/{k}", v, entry["step"])
        if self.wandb:
            self.wandb.log(entry, step=entry["step"])

    def skipped(self, problems: list[dict]) -> None:
        """Skipped records and fixed or dropped objects, as Problem dicts (one JSONL format for every room)."""
        if self.active and problems:
            append_problems(self.skip_path, problems)

    def close(self):
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in TENSOR_KEYS if k in batch}


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
                                    d.csv_sep, d.num_samples, d.workers, d.shuffle_buffer, d.shuffle_initial),
                       views, tokenizer, cfg.optim.batch_size, ctx.rank, ctx.world, cfg.run.seed)


def optimisation_step(step_module, model, objective, teacher, optimizer, scaler, autocast, batch, lr, grad_clip):
    """Forward, backward, (EMA), clip, step; then the invariants: frozen text rows, logit-scale clamp."""
    set_lr(optimizer, lr)
    with autocast():
        losses = step_module(batch, teacher)
    (scaler.scale(losses["total"]) if scaler else losses["total"]).backward()
    if teacher is not None and objective.target == "ema":
        update_ema(teacher, model, objective.ema_momentum)  # official order: before the optimiser step
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
        if teacher is not None and objective.target == "ema":
            teacher.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return losses


#: A validation handed to the loop: ``validate(model, tokenizer, preprocess_eval, step) -> {metric: value}``, called
#: in eval mode under no_grad every ``run.val_every`` steps (on the main process). The loop never imports the evaluation room; the
#: ``farslip train`` command hands it ``farslip.eval.validation.retrieval_validator`` when ``run.val_csv`` is set.
Validator = Callable[[nn.Module, object, object, int], dict]


def train(cfg: TrainConfig, resume: str | None = None, validate: Validator | None = None) -> dict:
    """Run a training job described by ``cfg``; ``resume`` is None, ``"auto"`` or a checkpoint path;
    ``validate`` (optional) is called every ``run.val_every`` steps and its metrics are logged as ``val/...``."""
    if validate is None and cfg.run.val_csv and cfg.run.val_every:
        warnings.warn("run.val_csv is set but train() was handed no validator, so nothing is validated; pass "
                      "validate=farslip.eval.validation.retrieval_validator(cfg.run.val_csv, cfg.run.val_image_root) "
                      "(the farslip train command does)", stacklevel=2)
    ctx = distributed.setup(cfg.run.device)
    run_dir = Path(cfg.run.out)
    torch.manual_seed(cfg.run.seed + ctx.rank)

    # -- what we resume from ---------------------------------------------------------------------------------
    state = None
    if resume == "auto":
        found = newest_intact(run_dir)
        state = found[1] if found else None
        if ctx.is_main:
            print(f"[farslip] resuming from {found[0]}" if found else f"[farslip] no checkpoint in {run_dir}; fresh start")
    elif resume:
        state = load_training_checkpoint(Path(resume))

    # -- model, objective, teacher, data, optimiser -----------------------------------------------------------
    model, preprocess_eval, tokenizer = build_model(cfg, resuming=state is not None)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        if model.context_length == LONG_CONTEXT:
            freeze_leading_text_rows(model)  # the frozen rows are the checkpoint's, not the fresh model's
    model.to(ctx.device).train()
    objective = build_objective(cfg.objective)
    teacher = make_teacher(model) if objective.needs_teacher else None
    if teacher is not None and state is not None and state.get("teacher"):
        teacher.load_state_dict(state["teacher"])

    loader = build_loader(cfg, model, tokenizer, ctx)
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.weight_decay, (o.beta1, o.beta2), o.eps)
    scaler = torch.amp.GradScaler(ctx.device.type) if o.precision in ("amp", "amp_fp16", "fp16") else None
    mode = autocast_mode(o.precision)
    autocast = lambda: autocast_for(ctx.device, mode, training=True)  # noqa: E731 -- a fresh context manager per step
    total_steps = loader.steps_per_epoch * o.epochs
    last_step = min(total_steps, o.max_steps) if o.max_steps else total_steps

    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "cursors": {}, "skipped": 0, "notes": 0}
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress.update(state["progress"])
        progress["cursors"] = {int(k): v for k, v in progress["cursors"].items()}
        set_rng_state(state["rng"])

    step_module = TrainStep(model, objective)
    if ctx.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.optim.compile:  # compiles the forward (model + objective); checkpoints still hold the plain model
        step_module = torch.compile(step_module)
    log = RunLog(run_dir, cfg, ctx.is_main, progress["step"] if state is not None else None)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict(), sort_keys=False))

    def checkpoint():
        if ctx.is_main:
            save_training_checkpoint(run_dir, model, optimizer=optimizer, scaler=scaler, teacher=teacher,
                                     progress=progress, config=cfg.to_dict(), keep_last=cfg.run.keep_last)

    bar = tqdm(total=last_step, initial=progress["step"], disable=not (ctx.is_main and cfg.run.progress),
               desc=cfg.name, unit="step", dynamic_ncols=True)
    samples_per_step = o.batch_size * ctx.world
    t_last, read = time.perf_counter(), 0
    try:
        while progress["step"] < last_step:
            epoch, step_before = progress["epoch"], progress["step"]
            for batch in loader.epoch(epoch, progress["batch_in_epoch"], progress["cursors"]):
                # ---- one optimisation step -----------------------------------------------------------------
                lr = cosine_lr(progress["step"], o.lr, o.warmup, total_steps)
                losses = optimisation_step(step_module, model, objective, teacher, optimizer, scaler, autocast,
                                           _to_device(batch, ctx.device), lr, o.grad_clip)

                # ---- bookkeeping -----------------------------------------------------------------------------
                progress["step"] += 1
                progress["batch_in_epoch"] += 1
                if "cursor" in batch:
                    role, position = batch["cursor"]
                    progress["cursors"][int(role)] = position
                progress["skipped"] += len(batch["skipped"])
                progress["notes"] += len(batch["notes"])
                log.skipped(batch["skipped"] + batch["notes"])
                read += samples_per_step
                step = progress["step"]
                if step % cfg.run.log_every == 0 or step == last_step:
                    now = time.perf_counter()
                    rate = cfg.run.log_every * samples_per_step / max(now - t_last, 1e-9)
                    t_last = now
                    entry = {"step": step, "epoch": epoch, "lr": lr, "logit_scale": model.logit_scale.exp().item(),
                             "samples_per_s": rate, **{k: v.item() for k, v in losses.items()},
                             "skipped": progress["skipped"]}
                    log.step(entry)
                    bar.set_postfix(loss=f"{entry['total']:.4f}", lr=f"{lr:.2e}", sps=f"{rate:.1f}",
                                    skipped=progress["skipped"])
                    _check_bad_data(cfg, ctx, progress, read, run_dir)
                bar.update(1)
                if cfg.run.val_every and step % cfg.run.val_every == 0:
                    _validate(validate, model, tokenizer, preprocess_eval, ctx, log, step)
                if step % cfg.run.save_every == 0 and step != last_step:
                    checkpoint()
                if step >= last_step:
                    break
            if progress["step"] == step_before and progress["batch_in_epoch"] < loader.steps_per_epoch:
                raise RuntimeError(f"epoch {epoch} produced no batch: no usable record in {cfg.data.train}")
            if progress["batch_in_epoch"] >= loader.steps_per_epoch:
                progress.update(epoch=epoch + 1, batch_in_epoch=0, cursors={})
    except KeyboardInterrupt:
        if ctx.is_main:
            print(f"\n[farslip] interrupted at step {progress['step']}; writing a checkpoint to resume from")
        checkpoint()
        raise
    finally:
        bar.close()
    checkpoint()
    if ctx.is_main:
        from ..models.loading import save_model

        save_model(model, run_dir / "final.pt")
        summary = {"steps": progress["step"], "skipped_records": progress["skipped"],
                   "object_fixes": progress["notes"], "final_model": str(run_dir / "final.pt")}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if progress["skipped"] or progress["notes"]:
            print(f"[farslip] skipped {progress['skipped']} unusable records and fixed or dropped {progress['notes']} "
                  f"objects; details in {run_dir / 'skipped.jsonl'}")
    log.close()
    distributed.teardown()
    return {"steps": progress["step"], "skipped_records": progress["skipped"], "object_fixes": progress["notes"],
            "run_dir": str(run_dir)}


def _check_bad_data(cfg, ctx, progress, read, run_dir):
    skipped = distributed.all_sum(progress["skipped"], ctx)
    total_read = distributed.all_sum(read, ctx) + skipped
    d = cfg.data
    too_many = d.max_bad_samples is not None and skipped > d.max_bad_samples
    too_often = total_read >= 1000 and skipped / total_read > d.max_bad_fraction
    if too_many or too_often:
        raise RuntimeError(
            f"stopping: {int(skipped)} of {int(total_read)} records were unusable (limits: data.max_bad_samples="
            f"{d.max_bad_samples}, data.max_bad_fraction={d.max_bad_fraction}); see {run_dir / 'skipped.jsonl'}")


def _validate(validate: Validator | None, model, tokenizer, preprocess, ctx, log, step):
    if not ctx.is_main or validate is None:
        return
    model.eval()
    with torch.no_grad():
        metrics = validate(model, tokenizer, preprocess, step)
    model.train()
    log.step({"step": step, **{f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}})
