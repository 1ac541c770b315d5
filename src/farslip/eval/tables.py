"""Several runs' results side by side, the paper's numbers beside them: one table per task (a column per dataset,
as the paper's tables have them) and, with ``detail``, one per task and dataset (every metric).

    tables = farslip.eval.results_tables(["runs/stage1/eval", "runs/stage2/eval"], paper=["farslip2-vit-b-16"])
    print(farslip.eval.format_tables(tables))                   # what `farslip eval table` prints

Every mean says over how many of the task's datasets it was taken (``35.41 (8/8)``, ``31.02 (2/8)``): a mean
over some of the sets is not the paper's mean. Each table names the protocol that made its numbers; OVSS rows
made with another protocol than the published numbers' (FarSLIP's) say so.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..core.errors import UsageError
from .registry import REGISTRY
from .report import COLUMNS, markdown_table, text_table

TASKS = ("classification", "retrieval", "ovss")
TITLES = {"classification": "Zero-shot scene classification, top-1 (%)",
          "retrieval": "Zero-shot image-text retrieval, mean of R@1/5/10 (%): image->text (i2t), text->image (t2i)",
          "ovss": "Open-vocabulary semantic segmentation, mIoU (%)"}
#: What made the numbers of a task (OVSS: each run's own protocol line from its results.json).
PROTOCOLS = {"classification": "FarSLIP's zero-shot classification (tests/test_scene_classification.py: the two "
                               "scene templates, 100 x cosine)",
             "retrieval": "FarSLIP's retrieval (tests/test_retrieval.py: unique images and texts, 'a satellite "
                          "image. ' before RSICD/RSITMD/UCM captions)"}
#: The registry's protocol names of the published numbers per task.
PAPER_PROTOCOL = {"classification": "farslip-zsc", "ovss": "farslip-ovss"}
PAPER_RETRIEVAL = ("farslip-retrieval-i2t", "farslip-retrieval-t2i")
#: The published OVSS numbers were made with this protocol (RS-OVSS eval_customized.py).
PAPER_OVSS_PROTOCOL = "farslip"


@dataclass
class Row:
    label: str
    cells: dict[str, float | None]         # column -> value (%)
    mean: float | None                     # over the datasets present
    sets: tuple[int, int]                  # (datasets in the mean, datasets of the task)
    protocol: str = ""
    published: bool = False
    as_published: bool = True              # made with the published numbers' protocol (OVSS: FarSLIP's, unchanged)
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # a cell that is a mean: its sets


@dataclass
class Table:
    task: str
    title: str
    columns: list[str]
    rows: list[Row]
    protocol: str                          # the table's protocol line ("" when its rows differ: see each row's)
    notes: list[str] = field(default_factory=list)
    label_header: str = "run"

    def header(self) -> list[str]:
        extra = ["mean (sets)"] if self.task in TASKS else []
        return [self.label_header] + self.columns + extra + ([] if self.protocol else ["protocol"])

    def cells(self) -> list[list[str]]:
        out = []
        for row in self.rows:
            line = [row.label] + [_fmt(row.cells.get(c)) + (f" ({row.counts[c][0]}/{row.counts[c][1]})"
                                                            if c in row.counts else "") for c in self.columns]
            if self.task in TASKS:
                line.append("-" if row.mean is None else f"{_fmt(row.mean)} ({row.sets[0]}/{row.sets[1]})")
            if not self.protocol:
                line.append(row.protocol)
            out.append(line)
        return out

    def text(self) -> str:
        lines = [self.title]
        if self.protocol:
            lines.append(f"protocol: {self.protocol}")
        lines.append(text_table(self.header(), self.cells()))
        return "\n".join(lines + [f"  {n}" for n in self.notes])

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.protocol:
            lines += [f"Protocol: {self.protocol}", ""]
        lines.append(markdown_table(self.header(), self.cells()))
        return "\n".join(lines + ([""] + [f"* {n}" for n in self.notes] if self.notes else []))

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- reading runs -------------------------------------------------------------------------------------------------

def read_results(path: str | Path) -> dict:
    """The report of a ``results.json``, or of the folder holding one (an ``--output`` of ``farslip eval``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise UsageError(f"{path}: no results.json (a results file of `farslip eval`, or the folder holding one)")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(report, dict) or not isinstance(report.get("sections"), dict):
        raise UsageError(f"{p}: not a results file of `farslip eval` (no 'sections')")
    return report


def run_label(report: dict, path: str | Path) -> str:
    """A run's name in the tables: a released model's name, else the checkpoint's folder and file, else the
    results folder."""
    checkpoint = (report.get("meta") or {}).get("checkpoint")
    published = (report.get("meta") or {}).get("published")
    if published:
        return published["model"]
    if checkpoint:
        cp = Path(checkpoint)
        return f"{cp.parent.name}/{cp.name}" if cp.parent.name else cp.name
    p = Path(path)
    return (p.parent if p.name == "results.json" else p).name


# -- the tables ---------------------------------------------------------------------------------------------------

def results_tables(runs: Sequence[str | Path | dict], *, labels: Sequence[str] | None = None,
                   paper: Iterable[str] | None = None, published: bool = True,
                   detail: bool = False) -> list[Table]:
    """One table per task found in ``runs`` (results.json paths, folders holding one, or loaded reports), a row per
    run, and -- ``published`` -- rows of the paper's numbers for every run of a released model and for the
    registry names in ``paper``. ``detail``: also one table per task and dataset with every metric."""
    from ..models.registry import get_entry

    reports = [r if isinstance(r, dict) else read_results(r) for r in runs]
    names = list(labels) if labels else [run_label(rep, r if not isinstance(r, dict) else "run")
                                         for rep, r in zip(reports, runs)]
    names = _distinct(names)
    entries = []
    if published:
        wanted = [rep["meta"]["published"]["model"] for rep in reports if (rep.get("meta") or {}).get("published")]
        entries = [get_entry(n) for n in dict.fromkeys([*wanted, *(paper or [])])]
    elif paper:
        raise UsageError("paper rows asked for with published=False")
    tables = []
    for task in TASKS:
        rows = [_run_row(task, rep["sections"][task], label, rep) for rep, label in zip(reports, names)
                if task in rep["sections"]]
        if not rows and not (paper and entries):
            continue
        rows += [row for row in (_paper_row(task, e) for e in entries) if row is not None]
        if rows:
            tables.append(_summary(task, rows))
    if detail:
        tables += [t for task in TASKS for t in _details(task, reports, names)]
    return tables


def format_tables(tables: Sequence[Table], markdown: bool = False) -> str:
    return "\n\n".join(t.markdown() if markdown else t.text() for t in tables)


def _distinct(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


#: The datasets in the order of the paper's tables (then any other registered one).
PAPER_ORDER = {
    "classification": ("SkyScript_cls", "AID", "EuroSAT", "fMoW", "MillionAID", "PatternNet", "NWPU-RESISC45",
                       "RSI-CB256"),
    "retrieval": ("RSICD", "RSITMD", "UCM-captions", "SkyScript"),
    "ovss": ("OpenEarthMap", "LoveDA", "Potsdam", "Vaihingen", "UDD5", "VDD", "UAVid", "iSAID"),
}


def _datasets(task: str) -> list[str]:
    order = [name for name in PAPER_ORDER[task] if name in REGISTRY[task]]
    return order + [name for name in REGISTRY[task] if name not in order]


def _columns(task: str, dataset: str) -> list[str]:
    return [f"{dataset} i2t", f"{dataset} t2i"] if task == "retrieval" else [dataset]


def _run_row(task: str, section: dict, label: str, report: dict) -> Row:
    cells: dict[str, float | None] = {}
    per_set = []
    for name, res in section.get("results", {}).items():
        if task == "retrieval":
            i2t, t2i = _pct(res.get("img2text_mean")), _pct(res.get("text2img_mean"))
            cells[f"{name} i2t"], cells[f"{name} t2i"] = i2t, t2i
            value = (i2t + t2i) / 2 if i2t is not None and t2i is not None else None
        else:
            value = res.get("top1" if task == "classification" else "mIoU")
            cells[name] = value
        if value is not None:
            per_set.append(value)
    mean = sum(per_set) / len(per_set) if per_set else None
    settings = section.get("protocol") or {}
    as_published = task != "ovss" or (settings.get("name") == PAPER_OVSS_PROTOCOL and not settings.get("overridden"))
    return Row(label, cells, mean, (len(per_set), len(_datasets(task))), _row_protocol(task, section, report),
               as_published=as_published)


def _pct(fraction) -> float | None:
    return None if fraction is None else 100 * fraction


def _row_protocol(task: str, section: dict, report: dict) -> str:
    meta = report.get("meta") or {}
    arithmetic = f"{meta.get('precision', '?')} weights, amp {meta.get('amp', '?')}"
    if task == "ovss":
        return f"{section.get('protocol_line') or 'OVSS protocol not recorded'}; {arithmetic}"
    return f"{PROTOCOLS[task]}; {arithmetic}"


def _paper_row(task: str, entry) -> Row | None:
    label = f"paper: {entry.name}"
    if task == "retrieval":
        i2t, t2i = (entry.paper_sets.get(p) for p in PAPER_RETRIEVAL)
        if not i2t or not t2i:
            return None
        cells = {**{f"{k} i2t": v for k, v in i2t.items()}, **{f"{k} t2i": v for k, v in t2i.items()}}
        return Row(label, cells, None, (0, len(_datasets(task))), "published (no mean given)", True)
    protocol = PAPER_PROTOCOL[task]
    if protocol not in entry.paper:
        return None
    per_set = entry.paper_sets.get(protocol, {})
    return Row(label, dict(per_set), entry.paper[protocol], (len(_datasets(task)), len(_datasets(task))),
               f"published ({protocol})", True)


def _summary(task: str, rows: list[Row]) -> Table:
    present = {c for r in rows for c in r.cells}
    columns = [c for d in _datasets(task) for c in _columns(task, d) if c in present]
    measured = {r.protocol for r in rows if not r.published}
    notes = []
    others = [r.label for r in rows if not r.as_published]
    if any(r.published for r in rows) and others:
        notes.append(f"published numbers are FarSLIP's protocol (RS-OVSS eval_customized.py) as registered; "
                     f"{', '.join(others)} used another or changed settings: not comparable with them")
    if any(r.sets[0] < r.sets[1] and not r.published for r in rows):
        notes.append("a mean over fewer sets than the task has is not the paper's mean (sets: those in the mean)")
    protocol = measured.pop() if len(measured) == 1 else ""
    if protocol:
        for r in rows:
            if r.published:
                notes.append(f"{r.label}: {r.protocol}")
    return Table(task, TITLES[task], columns, rows, protocol, notes)


def _details(task: str, reports: list[dict], names: list[str]) -> list[Table]:
    """One table per dataset of ``task``: every metric of every run."""
    tables = []
    cols = COLUMNS[task]
    scale = 100.0 if task == "retrieval" else 1.0
    for dataset in _datasets(task):
        rows = []
        for rep, label in zip(reports, names):
            res = rep["sections"].get(task, {}).get("results", {}).get(dataset)
            if res is not None:
                cells = {head: (None if res.get(key) is None else res[key] * scale) for head, key in cols}
                rows.append(Row(label, cells, None, (1, 1), _row_protocol(task, rep["sections"][task], rep)))
        if rows:
            measured = {r.protocol for r in rows}
            tables.append(Table(f"{task}/{dataset}", f"{dataset}: {TITLES[task].split(',')[0]} (%)",
                                [head for head, _ in cols], rows, measured.pop() if len(measured) == 1 else ""))
    return tables
