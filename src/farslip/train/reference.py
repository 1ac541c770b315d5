"""What every config key means: its help, its choices, the official flag it mirrors, and what changing it on resume
does. One table, :data:`KEYS`, used three ways: ``load_config`` refuses a value outside a key's choices, resume
sorts a changed key as harmless or exactness-breaking, and ``docs/config.md`` is generated from it together with
the dataclasses of :mod:`farslip.train.config` (types and defaults), so the reference cannot drift from the code
(``tests/train/test_config_reference.py`` compares them; regenerate with
``python -c "from farslip.train.reference import main; main(['docs/config.md'])"``).

Official flags are those of the FarSLIP training code (NJU-LHRS/FarSLIP ``open_clip_train/params.py``, with the
values ``open_clip_train/config.py``'s ``arg_dict`` applies first).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..data.loader import DATA_KINDS
from ..data.records import CAPTION_CHOICES
from ..data.views import VIEWS
from ..models.dense import ATTENTION_VARIANTS
from ..models.precision import TRAINING_PRECISION
from ..objectives.farslip import CAPTION_REGIONS, DISTILL_ALIGNS, GLOBAL_LOSSES, REGION_ALIGNS, TARGETS

#: ``objective.preset``: the paper's two stages and the plain fine-tuning baseline.
PRESETS = ("stage1", "stage2", "vanilla")
#: ``run.device``; ``cuda:N`` is accepted too.
DEVICES = ("auto", "cpu", "cuda")

#: What changing a key between a checkpoint and its resume does:
#:   exact   the continued run is no longer the run the checkpoint began (data, batch, schedule, objective, model):
#:           refused with the list of differences unless ``--resume-changed`` accepts them;
#:   free    how the run is carried out, logged or saved: accepted with a note;
#:   layout  how the work is spread over loader workers: accepted; the rest of the epoch is re-dealt (elastic).
RESUME_CLASSES = ("exact", "free", "layout")


@dataclass(frozen=True)
class KeyDoc:
    help: str
    official: str = ""                   # the official flag (or constant) this key mirrors; "" when it has none
    choices: tuple | None = None         # the values allowed (null too where the type allows it)
    resume: str = "exact"                # RESUME_CLASSES
    escapes: bool = False                # backslash escapes (\t, \n, \x1f) are decoded, from YAML or --set


KEYS: dict[str, KeyDoc] = {
    "name": KeyDoc("the run's name (log, progress bar, wandb)", "--name", resume="free"),

    "model.arch": KeyDoc("open_clip architecture; null with a farslip checkpoint as `pretrained`, which names its "
                         "own", "--model"),
    "model.pretrained": KeyDoc("starting weights: an open_clip tag (`openai`, `laion2b_s34b_b79k`), a released "
                               "model's name (`farslip model list`), or any file `farslip.load_model` reads (e.g. a "
                               "stage-1 result); null: random initialisation", "--pretrained"),
    "model.quick_gelu": KeyDoc("QuickGELU (true) or GELU (false); null follows the weights' lineage as evaluation "
                               "does (OpenAI tags and OpenAI-lineage releases: QuickGELU; laion tags, GeoRSCLIP "
                               "ViT-H/14, SkyCLIP ViT-B/32: GELU; a farslip checkpoint: its record). Forcing a value "
                               "the lineage contradicts warns", "--force-quick-gelu (always on in the official "
                               "config.py)"),
    "model.long_text": KeyDoc("Long-CLIP 248-token text encoder (rows 0..19 of the positions frozen)",
                              "--long-clip load_from_clip"),
    "model.grad_checkpointing": KeyDoc("recompute activations in the backward pass (less memory, same result)",
                                       "--grad-checkpointing", resume="free"),

    "data.kind": KeyDoc("the training data's format", "--train-dataset-type (webdataset | json | csv)",
                        choices=DATA_KINDS),
    "data.train": KeyDoc("shard spec(s) (brace-expanded, globbed, `::`-joined or a list), the MGRS "
                         "`text_info.json`, or the CSV", "--train-data"),
    "data.image_root": KeyDoc("folder the MGRS `global_filepath` / CSV image paths are relative to (default: the "
                              "JSON's folder and its `global_imgs/`; the CSV's folder)", "--root-train-img-dir"),
    "data.caption": KeyDoc("MGRS caption: official (global_caption, else detailed_caption), official_first_commit, "
                           "global, detailed, brief", "JsonDataset's choice (open_clip_train/data.py)",
                           choices=tuple(CAPTION_CHOICES)),
    "data.image_key": KeyDoc("CSV column of the image paths", "--csv-img-key"),
    "data.caption_key": KeyDoc("CSV column of the captions", "--csv-caption-key"),
    "data.csv_sep": KeyDoc("CSV separator, one character (`\\t` for tab-separated files)", "--csv-separator",
                           escapes=True),
    "data.num_samples": KeyDoc("webdataset: samples per epoch (default: counted from the shards' headers)",
                               "--train-num-samples"),
    "data.views": KeyDoc("views cut from each image: none, crops (random), grids, regions (MGRS objects)",
                         "--use-imagecrop-aug --local-method randomcrops | grids", choices=VIEWS),
    "data.num_crops": KeyDoc("crops or grid cells per image (stage 1)",
                             "--max-boxes (randomcrops draws that many crops; open_clip_train/data.py)"),
    "data.max_regions": KeyDoc("object regions per image (stage 2)", "--max-boxes"),
    "data.crop_scale": KeyDoc("area range of a random crop, two fractions (RandomResizedCrop scale)",
                              "scale=(0.3, 0.7) of randomcrops (open_clip_train/data.py)"),
    "data.crop_ratio": KeyDoc("aspect-ratio range of a random crop (RandomResizedCrop ratio)",
                              "ratio=(3/4, 4/3) of randomcrops (open_clip_train/data.py)"),
    "data.min_region_size": KeyDoc("skip objects whose box area is under this side squared (px)", "--min-size"),
    "data.max_region_size": KeyDoc("skip objects whose box area is over this side squared (px); null: no limit",
                                   "--max-size"),
    "data.workers": KeyDoc("loader worker processes per training process (webdataset: each reads its own shards; "
                           "changing it on resume re-deals the rest of the epoch)", "--workers", resume="layout"),
    "data.shuffle_buffer": KeyDoc("webdataset: samples a loader worker shuffles among (1: shard order)",
                                  "_SAMPLE_SHUFFLE_SIZE (open_clip_train/data.py)"),
    "data.shuffle_initial": KeyDoc("webdataset: the buffer's fill before the first draw",
                                   "_SAMPLE_SHUFFLE_INITIAL (open_clip_train/data.py)"),
    "data.views_on_device": KeyDoc("workers only decode; crops and regions are cut and resized on the GPU (the same "
                                   "views on a CPU)", resume="free"),
    "data.max_bad_samples": KeyDoc("stop once more records than this were unusable; null: no limit",
                                   resume="free"),
    "data.max_bad_fraction": KeyDoc("stop once this fraction of the records read (from 1000 on) was unusable",
                                    resume="free"),

    "objective.preset": KeyDoc("stage1 (global ITC + patch-to-patch distillation), stage2 (global ITC + CLS "
                               "region-category alignment), vanilla (global ITC only)",
                               "--method farslip1 | farslip2 with --loss-type", choices=PRESETS),
    "objective.distill": KeyDoc("distillation: roi2pooled (patch-to-patch, FarSLIP), roi2cls (patch-to-CLS), "
                                "combined; null keeps the preset's", "--distill-align", choices=DISTILL_ALIGNS),
    "objective.target": KeyDoc("distillation targets: active (the model itself), ema, frozen; null keeps the "
                               "preset's", "--distill-type", choices=TARGETS),
    "objective.region": KeyDoc("region alignment: cls (FarSLIP), pooled, roi; null keeps the preset's",
                               "--local-itc-align", choices=REGION_ALIGNS),
    "objective.multi_positive": KeyDoc("every region of the same category is a positive; null keeps the preset's",
                                       "--mpcl-loss"),
    "objective.caption_regions": KeyDoc("objects known only by a free-text caption: drop (official) or classes "
                                        "(each caption its own class); null keeps the preset's",
                                        choices=CAPTION_REGIONS),
    "objective.attn": KeyDoc("attention of the dense last block in training; null keeps the preset's",
                             "--last-attn-type", choices=ATTENTION_VARIANTS),
    "objective.global_weight": KeyDoc("weight of the global image-text contrast; null keeps the preset's", "--w-g"),
    "objective.distill_weight": KeyDoc("weight of the distillation term; null keeps the preset's", "--w-d"),
    "objective.region_weight": KeyDoc("weight of the region term; null keeps the preset's", "--w-l"),
    "objective.ema_momentum": KeyDoc("momentum of the EMA teacher; null keeps the preset's", "--EMA-momentum"),
    "objective.global_loss": KeyDoc("the global image-text term: softmax (CLIP's InfoNCE) or sigmoid (SigLIP's "
                                    "pairwise loss with the learned logit bias); null: what the weights were trained "
                                    "with (sigmoid when the model has a logit bias)",
                                    "--siglip (stock open_clip_train; not in FarSLIP's params.py)", choices=GLOBAL_LOSSES),

    "optim.lr": KeyDoc("peak learning rate (AdamW)", "--lr"),
    "optim.weight_decay": KeyDoc("AdamW weight decay (gains, biases and the logit scale excluded)", "--wd"),
    "optim.beta1": KeyDoc("AdamW beta1", "--beta1"),
    "optim.beta2": KeyDoc("AdamW beta2", "--beta2"),
    "optim.eps": KeyDoc("AdamW epsilon", "--eps"),
    "optim.warmup": KeyDoc("linear warm-up steps before the cosine decay", "--warmup"),
    "optim.epochs": KeyDoc("passes over the training data", "--epochs"),
    "optim.batch_size": KeyDoc("samples per process per micro-batch (the global batch is batch_size x "
                               "accum_steps x processes)", "--batch-size"),
    "optim.accum_steps": KeyDoc("micro-batches whose gradients make one optimiser step (per-sample terms equal the "
                                "large batch's; contrastive negatives are each micro-batch's: docs/training.md)",
                                "--accum-freq"),
    "optim.grad_clip": KeyDoc("clip the gradient norm to this; null: no clipping", "--grad-clip-norm"),
    "optim.precision": KeyDoc("fp32, amp (fp16 autocast + grad scaler) or amp_bf16", "--precision",
                              choices=tuple(TRAINING_PRECISION)),
    "optim.compile": KeyDoc("torch.compile the step (forward of model + objective)", "--torchcompile",
                            resume="free"),
    "optim.fsdp": KeyDoc("FSDP2: shard the model, gradients and optimiser state over the processes, with activation "
                         "checkpointing of each block and bf16 blocks under amp_bf16; checkpoints are sharded "
                         "(step_N.dcp beside step_N.pt). A checkpoint resumes only with the setting it was written "
                         "with"),
    "optim.max_steps": KeyDoc("stop the run after this many optimiser steps; the cosine schedule is fitted to the "
                              "steps run (to pause without changing the schedule: run.stop_after)"),

    "run.out": KeyDoc("the run's folder (run.json, config.yaml, log, checkpoints, final.pt)", "--logs + --name",
                      resume="free"),
    "run.seed": KeyDoc("seed of the data order, views and initialisation", "--seed"),
    "run.save_every": KeyDoc("steps between checkpoints (and one at the end)", "--save-frequency (in epochs)",
                             resume="free"),
    "run.keep_last": KeyDoc("checkpoints kept (0: all)", "--save-most-recent", resume="free"),
    "run.log_every": KeyDoc("steps between log lines", "--log-every-n-steps", resume="free"),
    "run.val_every": KeyDoc("steps between validations; 0: never", "--val-frequency (in epochs)", resume="free"),
    "run.val_csv": KeyDoc("held-out image-caption CSV validated by zero-shot retrieval", "--val-data",
                          resume="free"),
    "run.val_image_root": KeyDoc("folder the validation CSV's image paths are relative to", "--root-val-img-dir",
                                 resume="free"),
    "run.tensorboard": KeyDoc("TensorBoard scalars in RUN/tensorboard", "--report-to tensorboard", resume="free"),
    "run.wandb": KeyDoc("Weights & Biases logging (pip install 'farslip[wandb]')", "--report-to wandb",
                        resume="free"),
    "run.device": KeyDoc("auto (this process's GPU, else the CPU), cpu, cuda or cuda:N", "--device",
                         resume="free"),
    "run.progress": KeyDoc("progress bar", resume="free"),
    "run.stop_after": KeyDoc("pause after this step with a checkpoint, as a preempted run would (--resume auto "
                             "continues); the schedule is the full run's", resume="free"),
}


def key_doc(key: str) -> KeyDoc | None:
    return KEYS.get(key)


def check_choice(key: str, value) -> str | None:
    """Why ``value`` is not one of ``key``'s choices, or None when it is (or the key has none)."""
    doc = KEYS.get(key)
    if doc is None or doc.choices is None or value is None:
        return None
    if key == "run.device" and isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return None
    if value in doc.choices:
        return None
    return f"must be one of {', '.join(map(str, doc.choices))}, got {value!r}"


# -- the generated reference (docs/config.md) --------------------------------------------------------------------

HEADER = """\
# Config reference

Every key of a training recipe (`configs/*.yaml`, `--set section.key=value`), generated from
`farslip/train/config.py` (types, defaults) and `farslip/train/reference.py` (help, choices, official flags,
resume); `tests/train/test_config_reference.py` keeps this page equal to them. Regenerate with
`python -c "from farslip.train.reference import main; main(['docs/config.md'])"`.

*Official* is the flag of the FarSLIP training code (NJU-LHRS/FarSLIP `open_clip_train/params.py`, after
`config.py`'s `arg_dict`) the key mirrors. *Resume* says what changing the key between a checkpoint and
`--resume` does: **exact** keys make the continued run another run and are refused with the list of differences
unless `--resume-changed` accepts them; **free** keys pass with a note; **layout** keys re-deal the rest of the
epoch (see docs/training.md). Every value is checked before a run writes anything.
"""


def _flat_fields(cls, prefix: str = ""):
    """(dotted key, field) of every leaf of the config dataclasses, in declaration order."""
    for f in dataclasses.fields(cls):
        factory = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if factory is not None and dataclasses.is_dataclass(factory):
            yield from _flat_fields(factory, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def config_keys() -> list[str]:
    """Every dotted key of :class:`~farslip.train.config.TrainConfig`."""
    from .config import TrainConfig

    return [key for key, _ in _flat_fields(TrainConfig)]


def _default(f) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) + "]"
    return str(value)


def render_reference() -> str:
    """The Markdown of ``docs/config.md``."""
    from .config import TrainConfig

    lines = [HEADER]
    section = None
    for key, f in _flat_fields(TrainConfig):
        head = key.split(".")[0] if "." in key else "top level"
        if head != section:
            section = head
            lines += ["", f"## `{section}`" if "." in key else "## top level", "",
                      "| key | type | default | choices | what it does | official | resume |",
                      "|---|---|---|---|---|---|---|"]
        doc = KEYS.get(key)
        if doc is None:
            raise KeyError(f"config key {key} has no entry in farslip/train/reference.py KEYS")
        kind = str(f.type).replace("|", "or").replace("Any", "any")
        choices = ", ".join(map(str, doc.choices)) if doc.choices else ""
        cells = [f"`{key}`", kind, f"`{_default(f)}`", choices, doc.help.replace("|", "/"),
                 doc.official.replace("|", "/"), doc.resume]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Write the reference to ``argv[0]`` (e.g. ``docs/config.md``), or print it."""
    text = render_reference()
    if argv:
        from ..core.files import atomic_write

        atomic_write(Path(argv[0]), text)
    else:
        print(text, end="")
    return 0
