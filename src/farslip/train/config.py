"""Training configuration: YAML recipes in configs/, overridden on the command line with ``--set key=value``.

A config has five sections; every field has a default so a recipe states only what it changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelSection:
    arch: str | None = "ViT-B-16"
    pretrained: str | None = "openai"      # open_clip tag or any file load_model reads (e.g. a stage-1 result)
    quick_gelu: bool = True
    long_text: bool = False                # Long-CLIP 248-token text encoder (rows 0..19 frozen)
    grad_checkpointing: bool = False


@dataclass
class DataSection:
    kind: str = "webdataset"               # webdataset | mgrs | csv
    train: Any = None                      # shard spec(s), MGRS text_info.json, or CSV
    image_root: str | None = None
    caption: str = "official"              # MGRS: official (global_caption, else brief) | global | detailed | brief
    image_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str = ","
    num_samples: int | None = None
    views: str = "crops"                   # none | crops | grids | regions
    num_crops: int = 4                     # K crops / grid cells / regions per image
    crop_scale: list = field(default_factory=lambda: [0.3, 0.7])
    crop_ratio: list = field(default_factory=lambda: [3 / 4, 4 / 3])
    min_region_size: float = 64
    max_region_size: float | None = 1024
    workers: int = 8
    max_bad_samples: int | None = 1000     # stop the run once more records than this were unusable
    max_bad_fraction: float = 0.05         # ... or more than this fraction of the records read


@dataclass
class ObjectiveSection:
    preset: str = "stage1"                 # stage1 | stage2 | vanilla
    distill: str | None = None             # overrides of the preset (None = keep the preset's value)
    target: str | None = None
    region: str | None = None
    multi_positive: bool | None = None
    caption_regions: str | None = None
    attn: str | None = None
    global_weight: float | None = None
    distill_weight: float | None = None
    region_weight: float | None = None
    ema_momentum: float | None = None


@dataclass
class OptimSection:
    lr: float = 1e-6
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 1000
    epochs: int = 1
    batch_size: int = 40                   # per process
    grad_clip: float | None = None
    precision: str = "amp_bf16"            # fp32 | amp (fp16 + grad scaler) | amp_bf16
    compile: bool = False                  # torch.compile the step (measured: no gain in stage 1 on CPU, docs/)
    max_steps: int | None = None           # stop early (tests, smoke runs); the schedule still spans the epochs


@dataclass
class RunSection:
    out: str = "runs/train"
    seed: int = 0
    save_every: int = 1000                 # steps between checkpoints (and one at the end)
    keep_last: int = 3
    log_every: int = 1
    val_every: int = 0                     # steps between validations (0: never)
    val_csv: str | None = None             # held-out image-caption CSV for zero-shot retrieval
    val_image_root: str | None = None
    tensorboard: bool = True
    wandb: bool = False
    device: str = "auto"                   # auto | cpu | cuda
    progress: bool = True


@dataclass
class TrainConfig:
    name: str = "farslip"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise KeyError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        sub = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(value, dict):
            kwargs[name] = _build(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, str(known[name].type), f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value, annotation: str, where: str):
    """YAML reads ``5e-6`` as a string; numbers are converted by the field's declared type."""
    if not isinstance(value, str) or "str" in annotation:
        return value
    for name, kind in (("float", float), ("int", int)):
        if name in annotation:
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{where}: expected {name}, got {value!r}") from None
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """``["optim.lr=1e-5", "data.views=grids"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Read a YAML recipe (``base:`` chains to another recipe, relative to it) and apply overrides."""
    values: dict = {}
    if path is not None:
        values = _read_yaml_chain(Path(path))
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides or [])
    values = _merge(values, extra)
    return _build(TrainConfig, values, str(path or "config"))


def _read_yaml_chain(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop("base", None)
    return _merge(_read_yaml_chain(path.parent / base), values) if base else values
