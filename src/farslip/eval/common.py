"""Pieces shared by the three protocols: results, devices and precision, loaders, text embeddings."""
from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .io import BadRecord

Template = str | Callable[[str], str]

#: Zero-shot scene classification prompts (SkyScript's, used by FarSLIP for all eight sets).
SCENE_TEMPLATES: tuple[str, ...] = ("a satellite photo of {c}.", "a satellite image of {c}")


class EvalResult(dict):
    """A plain dict of the documented metrics, plus ``.info`` (counts, skipped records, timings, settings)."""

    def __init__(self, *args, info: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.info = info or {}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


#: What ``amp`` may be throughout the evaluation and inference API (the CLI's ``--amp`` choices map onto these).
Amp = bool | str | None


def autocast_for(model: nn.Module, amp: Amp) -> contextlib.AbstractContextManager:
    """The autocast the encoders run under.

    * ``None`` / ``"auto"``: the official scripts' ``precision='amp'`` -- float16 autocast on CUDA for an fp32
      model; nothing on the CPU (the paper's protocol, the default);
    * ``True`` / ``"fp16"``: float16 autocast on CUDA only; ``False`` / ``"off"``: none;
    * ``"bf16"``: bfloat16 autocast on the model's device, CPU included. Not the paper's protocol: on a CPU with
      native bf16 (avx512_bf16 / AMX) OVSS runs about 3x faster and a few pixels in a thousand change class
      (measured in docs/performance.md).
    """
    if amp not in (None, True, False, "auto", "fp16", "bf16", "off"):
        raise ValueError(f"amp must be auto, fp16, bf16 or off (or None/True/False), not {amp!r}")
    device = model_device(model)
    if amp == "bf16":
        if device.type == "cpu" and cpu_has_native_bf16() is False:
            warnings.warn("amp='bf16' on a CPU without avx512_bf16/AMX: bf16 is emulated there and usually slower "
                          "than fp32", RuntimeWarning, stacklevel=2)
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp in (False, "off") or device.type != "cuda":
        return contextlib.nullcontext()
    if amp in (None, "auto"):
        amp = model_dtype(model) == torch.float32
    return torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool | None:
    """True when the CPU flags list bf16 arithmetic (avx512_bf16 or AMX); None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return None
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int | None, collate_fn=None,
                pin: bool = False) -> DataLoader:
    workers = default_workers() if num_workers is None else num_workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_fn,
                      pin_memory=pin, persistent_workers=False)


def progress(iterable, *, total=None, desc: str | None = None, enabled: bool = True, unit: str = "it"):
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, dynamic_ncols=True, leave=False)


def split_bad(batch: list) -> tuple[list, list[BadRecord]]:
    good = [b for b in batch if not isinstance(b, BadRecord)]
    bad = [b for b in batch if isinstance(b, BadRecord)]
    return good, bad


# ----------------------------------------------------------------------------------------------------------------
# Text embeddings

def render(template: Template, name: str) -> str:
    """Fill a prompt template: a callable, or a string with ``{c}`` (or a bare ``{}``) where the name goes."""
    if callable(template):
        return template(name)
    if "{c}" in template:
        return template.replace("{c}", name)
    if "{}" in template:
        return template.replace("{}", name)
    raise ValueError(f"template {template!r} has no '{{c}}' for the class name")


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 256,
                 amp: Amp = False) -> torch.Tensor:
    """L2-normalised text embeddings ``[n, D]`` (in the dtype the model produces)."""
    device = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[i:i + batch_size])).to(device)
        with autocast_for(model, amp):
            out.append(F.normalize(model.encode_text(tokens), dim=-1))
    return torch.cat(out) if out else torch.empty(0, device=device)


class TextEmbeddingCache:
    """Prompt-ensembled name embeddings, computed once per (name, templates) for one model.

    Create one per model (and drop it when the weights change): a benchmark suite shares it across datasets, so a
    class list -- and a name that several lists share -- is encoded once.
    """

    def __init__(self):
        self._store: dict = {}

    def get(self, key):
        return self._store.get(key)

    def put(self, key, value) -> None:
        self._store[key] = value

    def __len__(self) -> int:
        return len(self._store)


@torch.no_grad()
def name_embeddings(model: nn.Module, tokenizer, names: Sequence[str], templates: Iterable[Template], *,
                    batch_size: int = 256, amp: Amp = False,
                    cache: TextEmbeddingCache | None = None) -> torch.Tensor:
    """Per name: the mean of its normalised prompt embeddings, renormalised. ``[len(names), D]``.

    This is both the zero-shot classifier (SkyScript's ``zero_shot_classifier``) and SegEarth-OV's query
    features (with OpenAI's 80 ImageNet templates).
    """
    templates = list(templates)
    if not templates:
        raise ValueError("no prompt templates")
    keys = [(tuple(render(t, n) for t in templates), amp) for n in names]
    todo = [i for i, k in enumerate(keys) if cache is None or cache.get(k) is None]
    fresh = {}
    if todo:
        prompts = [p for i in todo for p in keys[i][0]]
        emb = encode_texts(model, tokenizer, prompts, batch_size=batch_size, amp=amp)
        emb = emb.float().view(len(todo), len(templates), -1).mean(dim=1)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        for j, i in enumerate(todo):
            fresh[i] = emb[j]
            if cache is not None:
                cache.put(keys[i], emb[j])
    return torch.stack([fresh[i] if i in fresh else cache.get(keys[i]) for i in range(len(names))])
