"""Run registered benchmarks (or a user's own datasets) as a suite: missing datasets are named and skipped, bad
records are skipped and counted, every dataset's numbers and the means land in one result dict."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from torch import nn

from ..engine import TextEmbeddingCache
from ..engine.protocols import PROTOCOL_SETTINGS, SAM3_SETTINGS, get_protocol
from .io import EvalDataError
from .ovss import OVSSDataset, ovss
from .registry import select
from .retrieval import retrieval
from .zeroshot import zero_shot_classification

#: The keys averaged over datasets for each kind (the paper's table reports the first).
SUMMARY_KEYS = {
    "classification": ("top1", "top5"),
    "retrieval": ("text2img_R@1", "text2img_R@5", "text2img_R@10", "text2img_R@100", "text2img_mean",
                  "img2text_R@1", "img2text_R@5", "img2text_R@10", "img2text_R@100", "img2text_mean"),
    "ovss": ("mIoU", "aAcc", "mAcc"),
}


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def new_section(kind: str) -> dict:
    return {"kind": kind, "results": {}, "info": {}, "missing": {}, "failed": {}, "mean": {}}


def finish_section(section: dict, expected: int | None = None) -> dict:
    kind = section["kind"]
    keys = SUMMARY_KEYS[kind]
    res = section["results"]
    mean = {k: _mean([r.get(k) for r in res.values()]) for k in keys}
    if kind in ("classification", "ovss"):
        mean = {k: (round(v, 2) if v is not None else None) for k, v in mean.items()}
    section["mean"] = mean
    section["evaluated"] = len(res)
    section["expected"] = expected if expected is not None else len(res)
    section["skipped_records"] = sum(i.get("skipped", 0) for i in section["info"].values())
    return section


def _run_one(section: dict, name: str, fn: Callable[[], dict], log: Callable[[str], None]) -> None:
    t0 = time.time()
    try:
        result = fn()
    except (EvalDataError, OSError) as exc:
        section["failed"][name] = str(exc)
        log(f"[{section['kind']}] {name}: FAILED -- {exc}")
        return
    section["results"][name] = dict(result)
    section["info"][name] = getattr(result, "info", {})
    skipped = section["info"][name].get("skipped", 0)
    log(f"[{section['kind']}] {name}: done in {time.time() - t0:.1f}s"
        + (f" ({skipped} bad record(s) skipped)" if skipped else ""))


def _with_protocol(section: dict, options: dict) -> dict:
    """Resolve the OVSS protocol of ``options`` (name + overrides) once, record it in the section, and hand the
    resolved protocol on."""
    options = dict(options)
    overrides = {k: options.pop(k) for k in dict.fromkeys(PROTOCOL_SETTINGS + SAM3_SETTINGS) if k in options}
    proto = get_protocol(options.pop("protocol", None), overrides)
    section["protocol"] = proto.settings()
    section["protocol_line"] = proto.describe()
    return {**options, "protocol": proto}


def run_registered(kind: str, model: nn.Module, tokenizer, preprocess, *, data_root=None,
                   roots: Mapping[str, str] | None = None, names: Sequence[str] | None = None,
                   on_error: str = "skip", text_cache: TextEmbeddingCache | None = None,
                   overlay_root=None, log: Callable[[str], None] = print, **options) -> dict:
    """Evaluate the registered ``kind`` benchmarks found under ``data_root``.

    ``options`` go to the protocol function (``batch_size``, ``num_workers``, ``limit``, ``attn``, ...). A missing
    dataset is reported under ``"missing"`` with the paths that were expected, and the suite goes on.
    """
    section = new_section(kind)
    text_cache = text_cache if text_cache is not None else TextEmbeddingCache()
    if kind == "ovss":
        options = _with_protocol(section, options)
    benches = select(kind, names)
    for b in benches:
        located = data_root is not None or b.root in (roots or {})
        miss = b.missing(data_root, roots) if located else [f"--data-root or --root {b.root}=DIR"]
        if miss:
            section["missing"][b.name] = "expected " + "; ".join(miss)
            log(f"[{kind}] {b.name}: missing -- expected " + "; ".join(miss))
            continue
        if kind == "classification":
            p = b.paths(data_root, roots)
            fn = lambda b=b, p=p: zero_shot_classification(  # noqa: E731
                model, tokenizer, preprocess, p["csv"], p["classnames"], p["image_root"], templates=b.templates,
                on_error=on_error, text_cache=text_cache, desc=b.name, **options)
        elif kind == "retrieval":
            p = b.paths(data_root, roots)
            fn = lambda b=b, p=p: retrieval(  # noqa: E731
                model, tokenizer, preprocess, p["csv"], p["image_root"], caption_key=b.caption_key, prefix=b.prefix,
                on_error=on_error, desc=b.name, **options)
        else:
            ds = b.dataset(data_root, roots)
            fn = lambda ds=ds: ovss(  # noqa: E731
                model, tokenizer, ds, on_error=on_error, text_cache=text_cache, desc=ds.name,
                overlay_dir=(Path(overlay_root) / ds.name) if overlay_root else None, **options)
        _run_one(section, b.name, fn, log)
    return finish_section(section, expected=len(benches))


def run_custom(kind: str, model: nn.Module, tokenizer, preprocess, name: str, *, log: Callable[[str], None] = print,
               overlay_root=None, **kwargs) -> dict:
    """One user dataset through the same protocol and the same result layout as the registered suites."""
    section = new_section(kind)
    if kind == "classification":
        fn = lambda: zero_shot_classification(model, tokenizer, preprocess, desc=name, **kwargs)  # noqa: E731
    elif kind == "retrieval":
        fn = lambda: retrieval(model, tokenizer, preprocess, desc=name, **kwargs)  # noqa: E731
    else:
        kwargs = _with_protocol(section, kwargs)
        dataset: OVSSDataset = kwargs.pop("dataset")
        fn = lambda: ovss(model, tokenizer, dataset, desc=name,  # noqa: E731
                          overlay_dir=(Path(overlay_root) / name) if overlay_root else None, **kwargs)
    _run_one(section, name, fn, log)
    return finish_section(section, expected=1)
