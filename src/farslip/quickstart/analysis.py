"""What the quickstart's numbers say: each FarSLIP stage's change on the metric it targets, the share of that change
its own loss term made, the distillation loss's weight in stage 1, and the mean and spread over seeds.

The metrics themselves are computed in ``farslip.eval`` (``eval/dense.py`` for the dense probes); this module
only compares the five models the quickstart trains.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..eval.report import markdown_table

# The five models: each FarSLIP stage beside the same run with its new loss term switched off (the paper's
# ablation), so a change that more training alone would have made is not credited to the term.
PRE, S1, S1_ABL, S2, S2_ABL = ("pretrained (stand-in CLIP)", "FarSLIP stage 1", "stage 1 without distillation",
                               "FarSLIP stage 2", "stage 2 without region term")
MODELS = (PRE, S1_ABL, S1, S2_ABL, S2)
# per stage: (the model before it, the stage, the stage without its own loss term)
STAGE_MODELS = {1: (PRE, S1, S1_ABL), 2: (S1, S2, S2_ABL)}
# (label, results key, field, scale, the stage whose effect the row shows)
SEED_ROWS = (("dense patch acc. %", "dense", "patch_acc", 1, 1), ("crop agreement", "dense", "crop_agreement", 1, 1),
             ("OVSS mIoU %", "ovss", "mIoU", 1, 1), ("region-category acc. %", "regions", "top1", 1, 2),
             ("ZSC top-1 %", "classification", "top1", 1, 2),
             ("text->image mean R %", "retrieval", "text2img_mean", 100, 2),
             ("image->text mean R %", "retrieval", "img2text_mean", 100, 2))


def _digits(unit: str) -> int:
    return 3 if unit == "" else 2  # a cosine (no unit) gets a third digit


def change(results: dict, before: str, after: str, key: tuple[str, str], unit: str = " points") -> str:
    """``a -> b (+d unit)``: the metric ``results[model][key[0]][key[1]]`` of ``before`` and ``after``."""
    a, b = results[before][key[0]][key[1]], results[after][key[0]][key[1]]
    return f"{a:g} -> {b:g} ({b - a:+.{_digits(unit)}f}{unit})"


def term_share(results: dict, stage: str, ablation: str, key: tuple[str, str], unit: str = " points") -> str:
    """``+d unit``: the stage against the same run with its loss term's weight 0."""
    d = results[stage][key[0]][key[1]] - results[ablation][key[0]][key[1]]
    return f"{d:+.{_digits(unit)}f}{unit}"


def verdicts(results: dict) -> list[str]:
    """One line per stage: the metric it targets, before and after, and how much of the change the stage's own
    loss term made (the stage against the same run with that term off)."""
    return [f"* stage 1 (dense alignment): dense patch accuracy {change(results, PRE, S1, ('dense', 'patch_acc'))}, "
            f"the distillation term's share {term_share(results, S1, S1_ABL, ('dense', 'patch_acc'))}; crop "
            f"agreement {change(results, PRE, S1, ('dense', 'crop_agreement'), '')}, the term's share "
            f"{term_share(results, S1, S1_ABL, ('dense', 'crop_agreement'), '')}; OVSS mIoU "
            f"{change(results, PRE, S1, ('ovss', 'mIoU'))};",
            f"* stage 2 (region-category alignment): region-category accuracy "
            f"{change(results, S1, S2, ('regions', 'top1'))}, the region term's share "
            f"{term_share(results, S2, S2_ABL, ('regions', 'top1'))}; image-level ZSC "
            f"{change(results, S1, S2, ('classification', 'top1'))}, the region term's share "
            f"{term_share(results, S2, S2_ABL, ('classification', 'top1'))}.",
            "(A term's share: the stage against the same run with that term's weight 0.)"]


def distill_share(log: Path) -> dict | None:
    """Stage 1's distillation loss in its training log (``log.jsonl``): ``loss``, its mean over the steps, and
    ``share``, its weighted share of the total loss (None when the log records no step with all three terms)."""
    steps = [json.loads(x) for x in Path(log).read_text().splitlines() if x]
    steps = [e for e in steps if "distill" in e and "total" in e and "global_itc" in e]
    if not steps:
        return None
    d, total, itc = (sum(e[k] for e in steps) / len(steps) for k in ("distill", "total", "global_itc"))
    return {"loss": d, "share": (total - itc) / total}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return m, sd


def seed_table(runs: dict[int, dict]) -> str:
    """Markdown: per metric, each model's mean +- sample standard deviation over the seeds, then for the stage
    that targets the metric its change, seed by seed: against the model it started from (stage 1 - pretrained,
    stage 2 - stage 1) and against the same run without its loss term (the term's own share)."""
    models = [m for m in MODELS if m in next(iter(runs.values()))]
    rows = [[label] + _seed_row(runs, models, row) for label, *row in SEED_ROWS]
    return markdown_table(["metric"] + models + ["change by its stage: mean (per seed)",
                                                 "of which its loss term: mean (per seed)"], rows)


def _seed_row(runs: dict[int, dict], models: list[str], row: tuple) -> list[str]:
    """One metric's cells: each model's mean +- sd, then its stage's change against the start and the ablation."""
    group, field, scale, stage = row
    d = 3 if field == "crop_agreement" else 2  # a cosine, not a percentage

    def value(model, seed):
        return scale * runs[seed][model][group][field]

    cells = [f"{m:.{d}f} ± {sd:.{d}f}" for m, sd in (mean_sd([value(m, s) for s in runs]) for m in models)]
    before, after, ablation = STAGE_MODELS[stage]
    for base in (before, ablation):
        if base not in models:
            cells.append("")
            continue
        delta = [value(after, s) - value(base, s) for s in runs]
        cells.append(f"stage {stage}: {mean_sd(delta)[0]:+.{d}f} ({', '.join(f'{x:+.{d}f}' for x in delta)})")
    return cells
