"""Tables (console and Markdown) and JSON files for suite results."""
from __future__ import annotations

import json

from ..core.files import atomic_write
from ..core.problems import Problem
import math
from pathlib import Path
from typing import Sequence

TITLES = {
    "classification": "Zero-shot scene classification (accuracy, %)",
    "retrieval": "Zero-shot image-text retrieval (recall, %)",
    "ovss": "Open-vocabulary semantic segmentation (%)",
}
_RET_COLS = [("t2i R@1", "text2img_R@1"), ("t2i R@5", "text2img_R@5"), ("t2i R@10", "text2img_R@10"),
             ("t2i R@100", "text2img_R@100"), ("t2i mean", "text2img_mean"),
             ("i2t R@1", "img2text_R@1"), ("i2t R@5", "img2text_R@5"), ("i2t R@10", "img2text_R@10"),
             ("i2t R@100", "img2text_R@100"), ("i2t mean", "img2text_mean")]
COLUMNS = {
    "classification": [("top-1", "top1"), ("top-5", "top5")],
    "retrieval": _RET_COLS,
    "ovss": [("mIoU", "mIoU"), ("aAcc", "aAcc"), ("mAcc", "mAcc")],
}


def _fmt(v, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * scale:.2f}"


def section_rows(section: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per dataset, then the mean) of a suite section, numbers as display strings."""
    kind = section["kind"]
    scale = 100.0 if kind == "retrieval" else 1.0  # retrieval results are fractions
    cols = COLUMNS[kind]
    header = ["dataset"] + [c for c, _ in cols] + ["n"]
    rows = []
    for name, res in section["results"].items():
        info = section["info"].get(name, {})
        n = info.get("n", info.get("images", ""))
        if kind == "retrieval":
            n = f"{info.get('images', '')}/{info.get('texts', '')}"
        rows.append([name] + [_fmt(res.get(k), scale) for _, k in cols] + [str(n)])
    if len(section["results"]) > 1 or section.get("expected", 0) > 1:
        label = f"mean ({section['evaluated']}/{section['expected']})"
        rows.append([label] + [_fmt(section["mean"].get(k), scale) for _, k in cols] + [""])
    return header, rows


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _notes(section: dict) -> list[str]:
    notes = []
    for name, why in section.get("missing", {}).items():
        notes.append(f"missing {name}: {why}")
    for name, why in section.get("failed", {}).items():
        notes.append(f"failed {name}: {why}")
    for name, info in section.get("info", {}).items():
        if info.get("skipped"):
            first = info.get("errors") and str(Problem.from_dict(info["errors"][0]))
            notes.append(f"{name}: {info['skipped']} bad record(s) skipped (first: {first})")
    return notes


def console_report(report: dict) -> str:
    parts = []
    for kind in ("classification", "retrieval", "ovss"):
        if kind not in report["sections"]:
            continue
        section = report["sections"][kind]
        header, rows = section_rows(section)
        parts.append(TITLES[kind])
        if section.get("protocol_line"):
            parts.append(section["protocol_line"])
        parts.append(text_table(header, rows) if rows else "(no dataset evaluated)")
        parts += ["  " + n for n in _notes(section)]
        parts.append("")
    return "\n".join(parts)


def headline(report: dict) -> dict:
    """The paper's summary numbers: OVSS mean mIoU, ZSC mean top-1 (and retrieval means when run), each with the
    number of sets it is a mean over (``"ovss_sets": "2 of 8"``: not the paper's 8-set mean unless all ran)."""
    s = report["sections"]
    out = {}
    if "ovss" in s:
        out["ovss_mean_mIoU"] = s["ovss"]["mean"].get("mIoU")
        out["ovss_sets"] = _sets(s["ovss"])
    if "classification" in s:
        out["zsc_mean_top1"] = s["classification"]["mean"].get("top1")
        out["zsc_sets"] = _sets(s["classification"])
    if "retrieval" in s:
        m = s["retrieval"]["mean"]
        t, i = m.get("text2img_mean"), m.get("img2text_mean")
        out["retrieval_mean_recall"] = round(100 * (t + i) / 2, 2) if t is not None and i is not None else None
        out["retrieval_sets"] = _sets(s["retrieval"])
    return out


def _sets(section: dict) -> str:
    """``"k of n"``: n is the task's registered sets (the paper's mean is over all of them) when the section ran
    registered benchmarks, else the datasets it was given (a user's own)."""
    from .registry import REGISTRY

    registered = REGISTRY.get(section["kind"], {})
    names = {*section.get("results", {}), *section.get("missing", {}), *section.get("failed", {})}
    total = len(registered) if names and names <= set(registered) else section.get("expected", len(names))
    return f"{section.get('evaluated', len(section.get('results', {})))} of {total}"


def markdown_report(report: dict, base_dir=None) -> str:
    meta = report.get("meta", {})
    lines = ["# farslip evaluation", ""]
    for k, v in meta.items():
        lines.append(f"* {k}: `{v}`")
    lines.append("")
    head = headline(report)
    if head:
        lines += ["## Summary", "", markdown_table(list(head), [[v if isinstance(v, str) else _fmt(v)
                                                                for v in head.values()]]), ""]
    for kind in ("classification", "retrieval", "ovss"):
        if kind not in report["sections"]:
            continue
        section = report["sections"][kind]
        header, rows = section_rows(section)
        lines += [f"## {TITLES[kind]}", ""]
        if section.get("protocol_line"):
            lines += [section["protocol_line"] + f" ({section['protocol'].get('source', '')})", ""]
        lines += [markdown_table(header, rows) if rows else "(no dataset evaluated)", ""]
        lines += [f"* {n}" for n in _notes(section)]
        if kind == "ovss":
            for name, res in section["results"].items():
                ious = res.get("IoU", {})
                lines += ["", f"### {name}: per-class IoU (%)", "",
                          markdown_table(list(ious), [[_fmt(v) for v in ious.values()]])]
                for ov in section["info"].get(name, {}).get("overlays", []):
                    rel = Path(ov)
                    if base_dir is not None:
                        try:
                            rel = Path(ov).resolve().relative_to(Path(base_dir).resolve())
                        except ValueError:
                            pass
                    lines.append(f"![{name}]({rel.as_posix()})")
        lines.append("")
    return "\n".join(lines)


def _plain(x):
    """JSON-safe copy: NaN becomes null, tuples lists, paths strings."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_report(report: dict, output_dir) -> dict[str, Path]:
    """``results.json`` and ``results.md`` in ``output_dir``; returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    report = {**report, "headline": headline(report)}
    atomic_write(paths["json"], json.dumps(_plain(report), indent=2, default=str) + "\n")
    atomic_write(paths["markdown"], markdown_report(report, out) + "\n")
    return paths
