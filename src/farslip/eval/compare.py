"""Several OVSS protocols on the same dataset, side by side: which one helps, measured on the user's data and
weights (``farslip eval compare``).

    cmp = farslip.eval.compare(["farslip", "segearth-ov3", "sam3-clip-fuse"], "loveda", data_root="/data/rs-bench",
                               clip_checkpoint="farslip2-vit-b-16", sam3_checkpoint="sam3.pt")
    print(cmp.table())        # per-class IoU and mIoU, a column per protocol
    cmp.results["segearth-ov3"]["mIoU"]

Each protocol runs through :func:`~farslip.eval.evaluate` on the same images, the models loaded once; each one's
``results.json`` lands in ``OUTPUT/<protocol>/`` and the side-by-side table in ``OUTPUT/compare.json`` and
``OUTPUT/compare.md``. Classes are matched by their index (a protocol may name them differently: SegEarth-OV3's
class files for LoveDA, Potsdam and Vaihingen are not SegEarth-OV's).
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..core.errors import UsageError
from ..core.files import atomic_write
from ..engine.protocols import PROTOCOLS, get_protocol, is_sam3
from .evaluation import EvalOptions, OVSSData, evaluate
from .registry import select
from .report import text_table


@dataclass
class Comparison:
    """Each protocol's result on one dataset (``results``: protocol -> the metrics dict with per-class ``IoU``),
    the settings each ran with, and where the files went."""
    dataset: str
    protocols: list[str]
    results: dict[str, dict]
    settings: dict[str, dict] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """Header and rows: one per class (its names as each protocol calls it), then mIoU, aAcc, mAcc."""
        header = ["class"] + self.protocols
        per = [list((self.results[p].get("IoU") or {}).items()) for p in self.protocols]
        rows = []
        for i in range(max((len(x) for x in per), default=0)):
            names = list(dict.fromkeys(x[i][0] for x in per if i < len(x)))
            rows.append([" / ".join(names)] + [_cell(x[i][1] if i < len(x) else None) for x in per])
        for key in ("mIoU", "aAcc", "mAcc"):
            rows.append([key] + [_cell(self.results[p].get(key)) for p in self.protocols])
        return header, rows

    def table(self) -> str:
        header, rows = self.rows()
        return f"{self.dataset}: IoU per class (%), one column per protocol\n" + text_table(header, rows)

    def markdown(self) -> str:
        header, rows = self.rows()
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        notes = [f"* {p}: {self.settings[p].get('line', '')}" for p in self.protocols]
        return "\n".join([f"# {self.dataset}: protocols compared", "", *lines, "", *notes, ""])

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "protocols": self.protocols, "results": self.results,
                "settings": self.settings, "when": _dt.datetime.now().isoformat(timespec="seconds")}


def _cell(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def compare(protocols: Sequence[str], dataset: str | None = None, *, data_root=None,
            roots: Mapping[str, str | Path] | None = None, own: OVSSData | None = None,
            clip_checkpoint=None, sam3_checkpoint=None, arch: str | None = None, device: str | None = None,
            output: str | Path | None = None, options: EvalOptions | None = None,
            log: Callable[[str], None] = print) -> Comparison:
    """Run each of ``protocols`` on one dataset -- a registered benchmark's name (with ``data_root``/``roots``) or
    a user's own (``own``) -- and return the :class:`Comparison`. The CLIP protocols and the fusions take
    ``clip_checkpoint`` (with ``arch``), the SAM 3 ones ``sam3_checkpoint``; ``options`` apply to every run (its
    ``protocol`` is replaced by each of ``protocols``; its overrides go to the protocols that have them)."""
    protocols = _check(protocols, dataset, own, clip_checkpoint, sam3_checkpoint)
    options = options or EvalOptions()
    out = Path(output) if output else Path("runs") / "eval" / f"compare-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    _refuse_outputs_over_inputs(protocols, out, own, [data_root, *(roots or {}).values()],
                                [clip_checkpoint, sam3_checkpoint])
    clip, sam3 = _load(protocols, clip_checkpoint, sam3_checkpoint, arch, device, log)
    name = None
    results, settings = {}, {}
    for p in protocols:
        proto = get_protocol(p)
        run_options = replace(options, protocol=p, protocol_overrides=_fitting(proto, options.protocol_overrides))
        uses_clip = not is_sam3(proto) or proto.needs_clip
        run = evaluate("ovss", sam3_checkpoint if is_sam3(proto) else clip_checkpoint, data_root=data_root,
                       roots=roots, datasets=None if own else [dataset], own=own, output=out / p,
                       clip_checkpoint=None, sam3=sam3 if is_sam3(proto) else None,
                       **(clip if uses_clip else {}), options=run_options, log=log)
        section = run.report["sections"]["ovss"]
        if not section["results"]:
            raise UsageError(f"eval compare: {p} evaluated nothing ({'; '.join(_why(section))})")
        name, result = next(iter(section["results"].items()))
        results[p] = result
        settings[p] = {"line": section.get("protocol_line", ""), **section["info"][name].get("protocol", {})}
    cmp = Comparison(name, protocols, results, settings)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "compare.json", json.dumps(cmp.to_dict(), indent=2, default=str))
    atomic_write(out / "compare.md", cmp.markdown())
    cmp.paths = {"json": out / "compare.json", "markdown": out / "compare.md"}
    return cmp


def _refuse_outputs_over_inputs(protocols, out: Path, own, data_roots: list, checkpoints: list) -> None:
    """Before any model loads: no run's results (``OUT/<protocol>/``) and neither compare file may land on what is
    read -- the data, the class file, the benchmarks, the checkpoints."""
    from ..core.files import refuse_overwriting_inputs
    from .evaluation import _refuse_outputs_over_inputs as refuse_run_outputs

    for p in protocols:
        refuse_run_outputs(own, out / p, data_roots)
    inputs = [getattr(own, "classes_file", None), *checkpoints]
    refuse_overwriting_inputs([out / "compare.json", out / "compare.md"],
                              [Path(f) for f in inputs if f and Path(f).is_file()], hint="choose another --output")


def _check(protocols, dataset, own, clip_checkpoint, sam3_checkpoint) -> list[str]:
    protocols = [p.lower() for p in protocols]
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise UsageError(f"eval compare: unknown protocol(s) {', '.join(unknown)}; known: {', '.join(PROTOCOLS)}")
    if len(set(protocols)) < 2 or len(set(protocols)) != len(protocols):
        raise UsageError("eval compare: name two or more different protocols (--protocols A B ...)")
    if (dataset is None) == (own is None):
        raise UsageError("eval compare: give one registered dataset (--dataset NAME) or your own data, not both")
    if dataset is not None:
        try:
            select("ovss", [dataset])
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
    needs_clip = [p for p in protocols if not is_sam3(p) or get_protocol(p).needs_clip]
    needs_sam3 = [p for p in protocols if is_sam3(p)]
    if needs_clip and clip_checkpoint is None:
        raise UsageError(f"eval compare: {', '.join(needs_clip)} run(s) a CLIP: give --clip-checkpoint")
    if needs_sam3 and sam3_checkpoint is None:
        raise UsageError(f"eval compare: {', '.join(needs_sam3)} run(s) SAM 3: give --sam3-checkpoint")
    return protocols


def _load(protocols, clip_checkpoint, sam3_checkpoint, arch, device, log) -> tuple[dict, object]:
    """The CLIP (as ``evaluate``'s model/preprocess/tokenizer) and SAM 3 the protocols need, each loaded once."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip, sam3 = {}, None
    if any(not is_sam3(p) or get_protocol(p).needs_clip for p in protocols):
        from ..models import load_model

        model, _, preprocess, tokenizer = load_model(arch, clip_checkpoint, device=device)
        clip = {"model": model.eval(), "preprocess": preprocess, "tokenizer": tokenizer}
    if any(is_sam3(p) for p in protocols):
        from ..models.sam3 import load_sam3

        sam3 = load_sam3(sam3_checkpoint, device=device)[0]
    return clip, sam3


def _fitting(protocol, overrides: Mapping) -> dict:
    """The overrides that are settings of ``protocol`` (a SAM 3 protocol has no ``attn``, a CLIP no
    ``confidence``)."""
    from ..engine.protocols import PROTOCOL_SETTINGS, SAM3_SETTINGS

    known = SAM3_SETTINGS if is_sam3(protocol) else PROTOCOL_SETTINGS
    return {k: v for k, v in (overrides or {}).items() if k in known}


def _why(section: dict) -> list[str]:
    return [f"{k}: {v}" for k, v in {**section.get("missing", {}), **section.get("failed", {})}.items()]
