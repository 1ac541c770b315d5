"""``report.md``: the quickstart's results rendered through the Jinja template ``report.md.j2`` beside this module.

The tables are built here (``farslip.eval.report.markdown_table``), the comparisons come from ``analysis``, and
the prose lives in the template.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from ..core.files import atomic_write
from ..eval.report import markdown_table
from .analysis import S1, S2, S2_ABL, distill_share, verdicts

ARCH = "FarSLIP-Tiny"  # the model of the quickstart's recipes (resources/quickstart_*.yaml)
# The paper's schedules (configs/stage{1,2}_vitb16_*.yaml, from the official README commands), for the report.
PAPER_SCHEDULES = {
    "stage1": "ViT-B/16 from OpenAI CLIP; lr 1e-6, wd 1.0, warmup 1000, 1 epoch over 5.07 M RS5M pairs, "
              "batch 160 (4 GPUs x 40): about 31.7 k steps",
    "stage2": "ViT-B/16 from stage 1; lr 4e-9 (as written in the official command), wd 1.0, warmup 250, 10 epochs "
              "over MGRS-200k, batch 160: about 12.5 k steps",
    "pretrain": "(OpenAI CLIP's own pretraining: 400 M pairs)",
}


def render_report(out: Path, *, world: dict, results: dict, timings: dict, total: float, final: Path,
                  schedules: dict, seed: int, maps: dict | None, retrieval: dict) -> Path:
    """Write ``OUT/report.md`` and return its path.

    ``world``: the synthetic world's summary (``synth_world``); ``results``: per model, what
    ``run.evaluate_on_world`` returns; ``timings``: seconds per step, ``total`` the whole run's; ``final``: the
    final checkpoint; ``schedules``: per training run, its optimiser settings and steps; ``maps``: what
    ``run.maps_example`` returns (None: no maps section); ``retrieval``: what ``figures.retrieval_example``
    returns. The pictures ``OUT/loss_curves.png`` and ``OUT/retrieval_example.png`` are linked, not made, here.
    """
    first = next(iter(results.values()))
    text = _template().render(
        arch=ARCH, seed=seed, world=world, final=final, ovss_dir=out / "world" / "ovss",
        stage_table=stage_table(results), image_table=image_table(results), zsc_table=zsc_per_class(results),
        verdicts=verdicts(results), distill=distill_share(out / "runs" / "stage1" / "log.jsonl"),
        patches=first["dense"]["patches"], proto=first["ovss_protocol"],
        schedule_table=schedule_table(schedules), timing_table=timing_table(timings, total),
        overlays=[(name, Path(p).relative_to(out)) for name, r in results.items() for p in r["overlays"]],
        maps=maps, rel=lambda p: Path(p).relative_to(out), retrieval=retrieval)
    return atomic_write(out / "report.md", text)


def _template() -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                             lstrip_blocks=True, autoescape=False)  # Markdown, not HTML
    env.filters["fmt"] = format  # {{ x|fmt(".2f") }}: Python's format specs
    env.filters["code"] = lambda s: f"`{s}`"
    env.globals["docs_link"] = docs_link
    return env.from_string((resources.files(__package__) / "report.md.j2").read_text(encoding="utf-8"))


def docs_link(anchor: str = "three-seeds") -> str:
    """A link to a section of docs/quickstart.md (the three-seed table by default): the checkout's file when there
    is one, else its name."""
    docs = Path(__file__).resolve().parents[3] / "docs" / "quickstart.md"
    if docs.is_file():
        return f"[docs/quickstart.md]({docs.as_uri()}#{anchor})"
    return f"`docs/quickstart.md` (#{anchor}) in the farslip repository"


def stage_table(results: dict) -> str:
    """Markdown: per model, the metrics each stage targets."""
    rows = [[name, f"{r['dense']['patch_acc']:.2f}", f"{r['dense']['crop_agreement']:.3f}",
             f"{r['ovss']['mIoU']:.2f}", f"{r['ovss'].get('aAcc', float('nan')):.2f}", f"{r['regions']['top1']:.2f}"]
            for name, r in results.items()]
    return markdown_table(["model", "dense patch acc. % (stage 1)", "crop agreement (stage 1)",
                           "OVSS mIoU % (stage 1)", "OVSS pixel acc. %", "region-category acc. % (stage 2)"], rows)


def image_table(results: dict) -> str:
    """Markdown: per model, scene ZSC and retrieval (stored as fractions, shown as %)."""
    rows = [[name, f"{r['classification']['top1']:.2f}", f"{r['classification']['top5']:.2f}",
             f"{100 * r['retrieval']['text2img_mean']:.2f}", f"{100 * r['retrieval']['img2text_mean']:.2f}"]
            for name, r in results.items()]
    return markdown_table(["model", "ZSC top-1 %", "ZSC top-5 %", "text->image mean R@1/5/10 %",
                           "image->text mean R@1/5/10 %"], rows)


def zsc_per_class(results: dict) -> str:
    """Markdown: scene ZSC top-1 per class (correct of n) for stage 1 and both stage-2 runs: where ZSC is lost."""
    models = [m for m in (S1, S2_ABL, S2) if "classification_per_class" in results.get(m, {})]
    if not models:
        return ""
    per_class = {m: results[m]["classification_per_class"] for m in models}
    rows = [[c] + [f"{per_class[m][c]['correct']}/{per_class[m][c]['n']}" for m in models]
            for c in per_class[models[0]]]
    return markdown_table(["scene class: ZSC top-1 correct"] + models, rows)


def schedule_table(schedules: dict) -> str:
    """Markdown: each training run's schedule beside the paper's."""
    rows = [[name, f"lr {v['lr']:g}, wd {v['weight_decay']:g}, warmup {v['warmup']}, {v['epochs']} epoch(s), "
                   f"batch {v['batch_size']}: {v['steps']} steps", PAPER_SCHEDULES[name]]
            for name, v in schedules.items()]
    return markdown_table(["step", "this run (scaled to the tiny model)", "the paper"], rows)


def timing_table(timings: dict, total: float) -> str:
    """Markdown: seconds per step and in all."""
    return markdown_table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()] +
                          [["total", f"{total:.1f}"]])
