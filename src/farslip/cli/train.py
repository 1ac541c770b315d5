"""``farslip train``: run a YAML recipe, override any field, resume exactly."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
recipes (configs/):
  stage1_vitb16_rs5m.yaml     FarSLIP stage 1, ViT-B/16 on RS5M (global ITC + patch-to-patch distillation)
  stage1_vitb32_rs5m.yaml     the same, ViT-B/32
  stage2_vitb16_mgrs.yaml     FarSLIP stage 2, ViT-B/16 long text on MGRS-200k (global ITC + CLS region-category)
  stage2_vitb32_mgrs.yaml     the same, ViT-B/32
  vanilla_vitb16_rs5m.yaml    fine-tuning baseline (global ITC only)
  ablations/*.yaml            patch-to-CLS, combined, EMA / frozen targets, RoI and pooled region alignment

examples:
  farslip train --config configs/stage1_vitb16_rs5m.yaml --set data.train='/data/rs5m/{pub11,rs3}-train-{0000..0031}.tar'
  farslip train --config configs/stage2_vitb16_mgrs.yaml --set data.train=/data/mgrs/text_info.json \\
      --set model.pretrained=runs/stage1_vitb16/final.pt
  farslip train --config configs/stage1_vitb16_rs5m.yaml --resume auto       # continue after preemption
  farslip train --config configs/stage1_vitb16_rs5m.yaml --resume auto --set optim.lr=2e-6 --resume-changed
  farslip train --config configs/stage1_vitb16_rs5m.yaml --set optim.accum_steps=4 --set optim.batch_size=10
  farslip train --config configs/stage1_vitb16_rs5m.yaml --overwrite         # start run.out's run over
  torchrun --nproc_per_node=4 -m farslip train --config configs/stage1_vitb16_rs5m.yaml
  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
      --rdzv_endpoint=node0:29500 --rdzv_id=farslip1 -m farslip train --config ...

--set takes dotted keys and YAML values: --set optim.lr=5e-6 --set data.views=grids --set objective.target=ema
(--set 'data.csv_sep=\\t' for a tab). Every key, its default, choices and official flag: docs/config.md.
The whole config is checked before anything is written; a mistake is one line and leaves no run folder.
Resuming on another number of processes (torchrun) re-deals the rest of the epoch (docs/training.md).
"""


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train FarSLIP stage 1 / stage 2 or an ablation from a YAML recipe",
                       description="Train with a YAML recipe. One code path for one process, several GPUs "
                                   "(torchrun) or several nodes (torchrun rendezvous).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. optim.lr=1e-5 (repeatable)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': newest intact checkpoint of the run recorded in run.out (fresh start if none); or "
                        "a checkpoint file (its run continues, in its own folder or an empty one)")
    p.add_argument("--resume-changed", action="store_true",
                   help="continue a checkpoint although the config changed in what makes the run exact (batch "
                        "size, data, schedule, objective, model, seed); without this such a resume is refused with "
                        "the list of differences. Harmless changes (logging, saving, device) need no flag")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run.out that holds another run: its log, checkpoints and final model are "
                        "removed first (without this, such a folder is refused)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.config import load_config
    from ..train.loop import train

    cfg = _load_config_or_usage_error(args.config, args.overrides, load_config)
    validate = None
    if cfg.run.val_csv and cfg.run.val_every:
        from ..eval.validation import retrieval_validator

        validate = retrieval_validator(cfg.run.val_csv, cfg.run.val_image_root)
    train(cfg, resume=args.resume, validate=validate, overwrite=args.overwrite, resume_changed=args.resume_changed)
    return 0


def _load_config_or_usage_error(path: str, overrides: list[str], load_config):
    """The recipe, or a one-line UsageError naming the file (YAML syntax, not a mapping) or the value at fault
    (train.config raises plain ValueError/KeyError messages that already name ``--set KEY`` or ``FILE: KEY``)."""
    import yaml

    from ..core.errors import UsageError

    _check_yaml_chain(Path(path))
    try:
        return load_config(path, overrides)
    except yaml.YAMLError as exc:  # a --set value that is not YAML
        raise UsageError(f"--set: not a YAML value ({getattr(exc, 'problem', None) or exc})") from exc
    except (KeyError, ValueError) as exc:
        raise UsageError(exc.args[0] if exc.args else str(exc)) from exc


def _check_yaml_chain(path: Path) -> None:
    """Each recipe of a ``base:`` chain parses as a YAML mapping; otherwise one line naming the file."""
    import yaml

    from ..core.errors import UsageError

    seen = set()
    while path.is_file() and path.resolve() not in seen:
        seen.add(path.resolve())
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            raise UsageError(f"{where}: YAML syntax error: {getattr(exc, 'problem', None) or exc}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path}: not a UTF-8 text file (is it a YAML recipe?)") from exc
        if values is None:
            return
        if not isinstance(values, dict):
            raise UsageError(f"{path}: a recipe must be a YAML mapping of sections, got a {type(values).__name__}")
        base = values.get("base")
        if not base:
            return
        path = path.parent / str(base)
