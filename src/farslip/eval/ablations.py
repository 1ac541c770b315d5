"""The ablation study, evaluated: a recipe (``configs/eval/ablations.yaml``) names the paper's ablation tables,
each row a training recipe; every row's trained model (its ``run.out/final.pt``) is evaluated on the paper's
benchmarks -- once: the results are kept in ``run.out/eval-all/`` and reused until the model changes -- and the
rows are printed as the ablation tables lay them out: the variant, the OVSS mean mIoU, the zero-shot
classification mean top-1 and the retrieval mean recall, each with its count of sets.

    tables = farslip.eval.ablation_tables("configs/eval/ablations.yaml", data_root="/data/rs-bench")
    print(farslip.eval.format_tables(tables))                  # what `farslip eval ablations` prints
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import yaml

from ..core.errors import UsageError
from .evaluation import EvalOptions, evaluate
from .tables import Row, Table, read_results, results_tables

DEFAULT_RECIPE = Path("configs") / "eval" / "ablations.yaml"
EVAL_FOLDER = "eval-all"
#: The columns of an ablation table: (results task, header) -- the paper's summary numbers.
COLUMNS = (("ovss", "OVSS mIoU"), ("classification", "ZSC top-1"), ("retrieval", "retrieval mR"))


@dataclass(frozen=True)
class Variant:
    label: str
    config: Path        # the training recipe
    run_dir: Path       # its run.out
    paper: bool         # the paper's own choice (marked in the table)


def read_ablation_recipe(path: str | Path) -> list[tuple[str, list[Variant]]]:
    """``[(title, variants)]`` of an ablation recipe; each row's training recipe is read for its ``run.out``."""
    from ..train.config import load_config

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ablation recipe not found: {path}")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(spec.get("tables"), list):
        raise UsageError(f"{path}: an ablation recipe has a 'tables:' list of {{title, rows}}")
    out = []
    for t, table in enumerate(spec["tables"]):
        rows = table.get("rows") if isinstance(table, dict) else None
        if not isinstance(rows, list) or not table.get("title"):
            raise UsageError(f"{path}: tables[{t}] needs a title and a list of rows")
        variants = []
        for r, row in enumerate(rows):
            if not isinstance(row, dict) or "config" not in row or "label" not in row:
                raise UsageError(f"{path}: tables[{t}].rows[{r}] needs a label and a config")
            config = (path.parent / str(row["config"])).resolve()
            cfg = load_config(config)
            variants.append(Variant(str(row["label"]), config, Path(cfg.run.out), bool(row.get("paper", False))))
        out.append((str(table["title"]), variants))
    return out


def ablation_tables(recipe: str | Path = DEFAULT_RECIPE, *, data_root: str | Path | None = None,
                    roots: Mapping[str, str | Path] | None = None, datasets: Sequence[str] | None = None,
                    run_missing: bool = True, redo: bool = False, device: str | None = None,
                    options: EvalOptions | None = None, log: Callable[[str], None] = print) -> list[Table]:
    """The ablation tables of ``recipe``. Each row's model is evaluated (suite ``all``) unless its results are
    kept and newer than the model (``redo``: always; ``run_missing=False``: never, rows without results stay
    empty). A row whose model was not trained says so."""
    tables = []
    done: dict[Path, dict | str] = {}
    for title, variants in read_ablation_recipe(recipe):
        rows = []
        for v in variants:
            if v.run_dir not in done:
                done[v.run_dir] = _results(v, data_root, roots, datasets, run_missing, redo, device, options, log)
            rows.append(_row(v, done[v.run_dir]))
        notes = [f"{v.label}: {done[v.run_dir]}" for v in variants if isinstance(done[v.run_dir], str)]
        tables.append(Table("ablation", title, [header for _, header in COLUMNS], rows,
                            "`farslip eval all` (each task's protocol as `farslip eval table` prints it); means "
                            "over (sets evaluated/sets of the task); * the paper's choice", notes, "variant"))
    return tables


def _results(v: Variant, data_root, roots, datasets, run_missing, redo, device, options, log) -> dict | str:
    """The results report of a variant's model, or why there is none."""
    checkpoint = v.run_dir / "final.pt"
    kept = v.run_dir / EVAL_FOLDER / "results.json"
    if not checkpoint.is_file():
        return f"not trained ({checkpoint} missing: farslip train --config {_shown(v.config)})"
    if kept.is_file() and not redo and kept.stat().st_mtime >= checkpoint.stat().st_mtime:
        return read_results(kept)
    if not run_missing:
        return f"not evaluated ({kept} missing)"
    log(f"[ablations] evaluating {v.label}: {checkpoint}")
    run = evaluate("all", checkpoint, data_root=data_root, roots=roots, datasets=datasets,
                   output=v.run_dir / EVAL_FOLDER, device=device, options=options, log=log)
    return run.report


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _row(v: Variant, results: dict | str) -> Row:
    label = f"{v.label} *" if v.paper else v.label
    if isinstance(results, str):
        return Row(label, {}, None, (0, 0))
    summary = {t.task: t.rows[0] for t in results_tables([results], labels=[label], published=False)}
    cells = {header: summary[task].mean for task, header in COLUMNS if task in summary}
    counts = {header: summary[task].sets for task, header in COLUMNS if task in summary}
    return Row(label, cells, None, (0, 0), counts=counts)
