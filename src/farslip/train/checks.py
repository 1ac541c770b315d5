"""The whole config checked before a run joins a process group or writes anything: every value's type, choice
and range again (a config built in Python skips ``load_config``), then what only the whole config can say --
the data is there and readable as the recipe describes it, the views are those the objective needs, the device
exists, the optional packages the recipe turns on are installed. The first problem is raised as one line naming
the key (``farslip: error: ...``, exit 2); the starting weights are fetched next, still before the run folder is
written (``models.hub.ensure_pretrained``)."""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import open_clip
import torch

from ..data.shards import expand_shards
from ..models.loading import register_model_configs
from .config import ConfigError, TrainConfig, validated


def check_config(cfg: TrainConfig) -> None:
    """Raise :class:`~farslip.train.config.ConfigError` (one line, naming the key) for the first problem found."""
    cfg = validated(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_views_fit_objective(cfg)
    _check_run(cfg)


def _check_model(cfg: TrainConfig) -> None:
    arch = cfg.model.arch
    if arch is None:
        return
    register_model_configs()
    if open_clip.get_model_config(arch) is None:
        raise ConfigError(f"model.arch: unknown architecture {arch!r} (open_clip's and farslip's: "
                          f"{', '.join(open_clip.list_models()[:12])}, ...)")


def _check_data(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.train in (None, "", []):
        raise ConfigError("data.train: no training data given (set it in the recipe or --set data.train=...)")
    if d.image_root is not None and not Path(d.image_root).is_dir():
        raise ConfigError(f"data.image_root: {d.image_root} is not a folder")
    if d.kind == "webdataset":
        try:
            shards = expand_shards(d.train)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"data.train: {d.train!r} is not a shard spec ({exc})") from None
        missing = [s for s in shards if not os.path.isfile(s)]
        if not shards:
            raise ConfigError(f"data.train: no shard matches {d.train!r}")
        if missing:
            raise ConfigError(f"data.train: {len(shards) - len(missing)} of {len(shards)} shards found, e.g. "
                              f"{missing[0]} is missing")
        return
    path = Path(str(d.train))
    if not path.is_file():
        raise ConfigError(f"data.train: {path} is not a file (data.kind={d.kind} reads "
                          f"{'an MGRS text_info.json' if d.kind == 'mgrs' else 'an image-caption CSV'})")
    if d.kind == "csv":
        _check_csv_header(path, d.image_key, d.caption_key, d.csv_sep)


def _check_csv_header(path: Path, image_key: str, caption_key: str, sep: str) -> None:
    if len(sep) != 1:
        raise ConfigError(f"data.csv_sep: a separator is one character, got {sep!r} (a tab is \\t)")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter=sep), [])
    except UnicodeDecodeError:
        raise ConfigError(f"data.train: {path} is not UTF-8 text (is it a CSV?)") from None
    for key, column in (("data.image_key", image_key), ("data.caption_key", caption_key)):
        if column not in header:
            raise ConfigError(f"{key}: {path}'s header has no column {column!r} with data.csv_sep={sep!r}; its "
                              f"columns: {header}")


def _check_views_fit_objective(cfg: TrainConfig) -> None:
    from .loop import build_objective

    try:
        objective = build_objective(cfg.objective)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"objective: {exc}") from None
    views = cfg.data.views
    if objective.distill and views not in ("crops", "grids"):
        raise ConfigError(f"data.views={views}: the objective distills crops (objective.distill="
                          f"{objective.distill}); use data.views=crops or grids, or objective.preset=vanilla")
    if objective.region and views != "regions":
        raise ConfigError(f"data.views={views}: the objective aligns object regions (objective.region="
                          f"{objective.region}); use data.views=regions")
    if views == "regions" and cfg.data.kind != "mgrs":
        raise ConfigError(f"data.views=regions: object regions come from MGRS boxes; data.kind={cfg.data.kind} "
                          "has none")
    lo, hi = cfg.data.crop_scale if len(cfg.data.crop_scale) == 2 else (None, None)
    if lo is None or not 0 < lo <= hi <= 1:
        raise ConfigError(f"data.crop_scale: two area fractions 0 < low <= high <= 1, got {cfg.data.crop_scale}")
    lo, hi = cfg.data.crop_ratio if len(cfg.data.crop_ratio) == 2 else (None, None)
    if lo is None or not 0 < lo <= hi:
        raise ConfigError(f"data.crop_ratio: two aspect ratios 0 < low <= high, got {cfg.data.crop_ratio}")
    high = cfg.data.max_region_size
    if high is not None and high < cfg.data.min_region_size:
        raise ConfigError(f"data.max_region_size: {high} is under data.min_region_size {cfg.data.min_region_size}")


def _check_run(cfg: TrainConfig) -> None:
    r = cfg.run
    if Path(r.out).exists() and not Path(r.out).is_dir():
        raise ConfigError(f"run.out: {r.out} is a file, not a folder")
    device = r.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device={device}: no CUDA GPU is visible to this process (use auto or cpu)")
        index = int(device[5:]) if device.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"run.device={device}: this machine has {torch.cuda.device_count()} GPU(s)")
    if r.wandb and not installed("wandb"):
        raise ConfigError("run.wandb=true: wandb is not installed (pip install 'farslip[wandb]'), or set "
                          "run.wandb=false")
    if r.tensorboard and not installed("tensorboard"):
        raise ConfigError("run.tensorboard=true: tensorboard is not installed (pip install tensorboard), or set "
                          "run.tensorboard=false")
    if r.val_every and r.val_csv:
        if not Path(r.val_csv).is_file():
            raise ConfigError(f"run.val_csv: {r.val_csv} is not a file")
        if r.val_image_root and not Path(r.val_image_root).is_dir():
            raise ConfigError(f"run.val_image_root: {r.val_image_root} is not a folder")


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


__all__ = ["ConfigError", "check_config", "installed"]
