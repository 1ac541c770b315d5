"""Training configuration: YAML recipes in configs/, overridden on the command line with ``--set key=value``.

A config has five sections; every field has a default so a recipe states only what it changes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import UsageError
from .reference import KEYS, check_choice


class ConfigError(UsageError):
    """A recipe or ``--set`` value that cannot be used; the message names the recipe or --set and the key."""


class UnknownKeyError(ConfigError, KeyError):
    """A key no section has (also a KeyError, as a dict would raise)."""

    __str__ = Exception.__str__  # the message as written, not KeyError's quoted repr


@dataclass
class ModelSection:
    arch: str | None = "ViT-B-16"
    pretrained: str | None = "openai"      # open_clip tag or any file load_model reads (e.g. a stage-1 result)
    quick_gelu: bool | None = None         # None: follow the weights' lineage (models.lineage), as evaluation does
    long_text: bool = False                # Long-CLIP 248-token text encoder (rows 0..19 frozen)
    grad_checkpointing: bool = False


@dataclass
class DataSection:
    kind: str = "webdataset"               # webdataset | mgrs | csv
    train: Any = None                      # shard spec(s), MGRS text_info.json, or CSV
    image_root: str | None = None
    caption: str = "official"              # MGRS: official (global_caption, else detailed) | global | detailed | brief
    image_key: str = "filepath"
    caption_key: str = "title"
    csv_sep: str = ","
    num_samples: int | None = None
    views: str = "crops"                   # none | crops | grids | regions
    num_crops: int = 4                     # K crops or grid cells per image (stage 1)
    max_regions: int = 4                   # K object regions per image (stage 2; official --max-boxes)
    crop_scale: list = field(default_factory=lambda: [0.3, 0.7])
    crop_ratio: list = field(default_factory=lambda: [3 / 4, 4 / 3])
    min_region_size: float = 64
    max_region_size: float | None = 1024
    workers: int = 8
    shuffle_buffer: int = 5000             # webdataset: sample shuffle buffer per loader worker (official 5000; 1 = off)
    shuffle_initial: int = 1000            # ... filled this far before the first draw (official 1000)
    views_on_device: bool = False          # workers only decode; crops/regions cut and resized on the GPU
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
    global_loss: str | None = None         # softmax | sigmoid (SigLIP); None: what the weights were trained with
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
    fsdp: bool = False                     # FSDP2: shard model, gradients, optimiser; activation checkpointing; bf16
                                           # blocks with amp_bf16; sharded checkpoints (train/sharding.py)
    max_steps: int | None = None           # a shorter run; the cosine schedule is fitted to the steps run
    accum_steps: int = 1                   # micro-batches of batch_size per optimiser step (official --accum-freq)


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
    stop_after: int | None = None          # pause after this step with a checkpoint; the schedule is the full run's


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


def _build(cls, values: dict, source, section: str = ""):
    """``cls`` from ``values``; ``source(key)`` (the recipe or ``--set``) and ``section`` name a bad field in errors."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        where = source(section + sorted(unknown)[0])
        raise UnknownKeyError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        sub = known[name].default_factory if known[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{source(section + name)}: expected a mapping of {name} fields, got {_shown(value)}")
            kwargs[name] = _build(sub, value, source, f"{section}{name}.")
        else:
            kwargs[name] = _coerce(value, str(known[name].type), f"{section}{name}", source)
    return cls(**kwargs)


# Smallest sensible value of numeric fields ("section.field"); anything else is a typo that would train nonsense.
MINIMUM = {
    "data.num_samples": 1, "data.num_crops": 1, "data.max_regions": 1, "data.workers": 0, "data.shuffle_buffer": 1,
    "data.shuffle_initial": 1, "data.min_region_size": 0, "data.max_region_size": 1, "data.max_bad_samples": 0,
    "data.max_bad_fraction": 0,
    "objective.global_weight": 0, "objective.distill_weight": 0, "objective.region_weight": 0,
    "objective.ema_momentum": 0,
    "optim.lr": 0, "optim.weight_decay": 0, "optim.beta1": 0, "optim.beta2": 0, "optim.eps": 0, "optim.warmup": 0,
    "optim.epochs": 1, "optim.batch_size": 1, "optim.grad_clip": 0, "optim.max_steps": 1, "optim.accum_steps": 1,
    "run.stop_after": 1, "run.save_every": 1, "run.keep_last": 0, "run.log_every": 1, "run.val_every": 0,
}
MAXIMUM = {"data.max_bad_fraction": 1, "objective.ema_momentum": 1, "optim.beta1": 1, "optim.beta2": 1}


def _coerce(value, annotation: str, key: str, source: str):
    """``value`` as the field's declared type, or a ValueError naming the field.

    Bools are not numbers (``optim.lr=true`` is refused), lists are not scalars, integers must be whole, and
    counts below their minimum are refused. YAML reads ``5e-6`` as a string, so numbers in strings are converted.
    """
    kinds = {k.strip() for k in annotation.split("|")}
    where = source(key)
    if value is None:
        if "None" in kinds or "Any" in kinds:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    if "Any" in kinds:
        return value
    for name, convert in (("bool", _as_bool), ("int", _as_int), ("float", _as_float), ("list", _as_list),
                          ("str", _as_str)):
        if name in kinds:
            converted = convert(value)
            if converted is not None:
                if isinstance(converted, str) and key in KEYS and KEYS[key].escapes:
                    converted = decode_escapes(converted, where)
                wrong = check_choice(key, converted)
                if wrong:
                    raise ConfigError(f"{where}: {wrong}")
                return _check_range(converted, key, where)
    names = {"list": "list of numbers"}
    expected = " or ".join(sorted(names.get(k, k) for k in kinds - {"None"})) + (" or null" if "None" in kinds else "")
    raise ConfigError(f"{where}: expected {expected}, got {_shown(value)}")


def _shown(value) -> str:
    """A value as the user wrote it in YAML, and what YAML made of it."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "text", list: "a list", dict: "a mapping"}
    return f"{json.dumps(value, default=str)} ({kinds.get(type(value), type(value).__name__)})"


def _as_bool(value):
    return value if isinstance(value, bool) else None


def _as_int(value):
    if isinstance(value, bool) or isinstance(value, (list, dict)):
        return None
    if isinstance(value, int):
        return value
    number = _as_float(value)
    return int(number) if number is not None and number.is_integer() else None


def _as_float(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # nan and inf are no settings


def _as_list(value):
    """The config's lists hold numbers (crop scales and ratios)."""
    if not isinstance(value, (list, tuple)):
        return None
    numbers = [_as_float(v) for v in value]
    return None if None in numbers else numbers


def _as_str(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # `name: 2024` means the text
    return value if isinstance(value, str) else None


def decode_escapes(text: str, where: str = "") -> str:
    """``\\t`` -> a tab, ``\\x1f`` -> that byte's character: YAML's plain scalars (and ``--set`` values) keep
    backslashes as typed, so a separator written ``\\t`` would otherwise be two characters."""
    if "\\" not in text:
        return text
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: {text!r} is not a valid escape sequence ({exc.reason})") from None


def _check_range(value, key: str, where: str):
    low, high = MINIMUM.get(key), MAXIMUM.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if low is not None and value < low:
            raise ConfigError(f"{where}: must be at least {low}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{where}: must be at most {high}, got {value!r}")
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """``["optim.lr=1e-5", "data.views=grids"]`` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if raw and not raw.strip():  # a tab or spaces typed as the value: YAML would read them as null
            node[parts[-1]] = raw
            continue
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:  # not YAML (a bare `,` or `|`, an unclosed bracket): the text as typed; the key's
            node[parts[-1]] = raw  # type then accepts it (a separator) or names it
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
    _read_deprecated_keys(values, path)
    overridden = set(_dotted_keys(extra))

    def source(key: str) -> str:
        return f"--set {key}" if key in overridden or path is None else f"{path}: {key}"

    return _build(TrainConfig, values, source)


def validated(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` rebuilt through the checks a recipe's values go through (a config built or changed in Python never
    went through ``load_config``); errors name the key."""
    return _build(TrainConfig, cfg.to_dict(), lambda key: key)


def _read_deprecated_keys(values: dict, path) -> None:
    """Old spellings still read, with a message saying the new one."""
    data = values.get("data")
    if isinstance(data, dict) and data.get("views") == "regions" and "num_crops" in data and "max_regions" not in data:
        warnings.warn(f"{path or '--set'}: data.num_crops with views: regions is now data.max_regions (the number of "
                      f"object regions per image); reading it as max_regions={data['num_crops']!r}", FutureWarning,
                      stacklevel=3)
        data["max_regions"] = data.pop("num_crops")


def _dotted_keys(values: dict, prefix: str = ""):
    for k, v in values.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _dotted_keys(v, f"{prefix}{k}.")


def _read_yaml_chain(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections (model, data, objective, optim, run), "
                          f"got {_shown(values)}")
    base = values.pop("base", None)
    return _merge(_read_yaml_chain(path.parent / base), values) if base else values


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
