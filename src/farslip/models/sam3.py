"""SAM 3 (Meta's Segment Anything Model 3) weights, loaded into transformers' ``Sam3Model``.

Why transformers and not the official ``sam3`` package (docs/models.md, "SAM 3"): the official package pins
``numpy<2.4`` and ``huggingface-hub<2`` (farslip runs numpy 2.4 and huggingface_hub 2.x), builds its decoder's
coordinate cache and position encodings on ``"cuda"`` (``decoder.py``, ``position_encoding.py``: it cannot be
constructed on a machine without a GPU), and fixes every size in its builders; transformers' ``Sam3Model`` runs on
any device, takes a batch of text prompts against one image's features, and is built from a ``Sam3Config`` of any
size, so the tests run the real architecture at a tiny size.

Weights load from

* the official checkpoint ``sam3.pt`` (what SegEarth-OV3's README downloads; keys ``detector.*`` and
  ``tracker.*``), or the same keys as safetensors -- renamed to transformers' names by :func:`official_to_transformers`;
* the Hub's transformers files (``config.json`` + ``model.safetensors``, keys ``detector_model.*``), as a folder or
  the ``.safetensors`` file;
* the registry name ``sam3`` (facebook/sam3 on the Hub, gated: the standard Hub token).

Only tensors are read (``torch.load(weights_only=True)``, safetensors): no pickled code runs. A file whose size is
not the official one carries its ``config.json`` beside it.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UsageError
from .checkpoint_io import CheckpointError

#: Text positions of SAM 3's text encoder (the official ``VETextEncoder`` context length).
SAM3_CONTEXT = 32

#: The registry name and its Hub repository.
SAM3_NAME = "sam3"
SAM3_HUB_REPO = "facebook/sam3"
SAM3_HUB_FILES = ("config.json", "model.safetensors")


class Sam3CheckpointError(CheckpointError):
    """A file or name that is not a usable SAM 3 checkpoint (the message says which and why)."""


def require_transformers():
    """transformers' SAM 3 classes, or one line saying how to install them."""
    try:
        import transformers
        from transformers import Sam3Config, Sam3Model  # noqa: F401
    except ImportError:
        raise UsageError("SAM 3 protocols need transformers >= 5.25 (pip install 'farslip[sam3]')") from None
    return transformers


# ----------------------------------------------------------------------------------------------------------------
# Configurations

#: A SAM 3 small enough for tests and the memory benchmark: the real architecture (ViT with windowed and global
#: RoPE attention, FPN, CLIP text encoder, DETR encoder/decoder with the presence token, mask and semantic heads) at
#: widths of 32, 112 px inputs (an 8 x 8 patch grid) and 10 object queries.
TINY = {
    "vision_config": {"backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
                                          "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 112,
                                          "patch_size": 14, "window_size": 4, "global_attn_indexes": [1],
                                          "pretrain_image_size": 56},
                      "fpn_hidden_size": 32, "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]]},
    "text_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "max_position_embeddings": SAM3_CONTEXT},
    "geometry_encoder_config": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2,
                                "intermediate_size": 64},
    "detr_encoder_config": {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "detr_decoder_config": {"hidden_size": 32, "num_layers": 1, "num_queries": 10, "num_attention_heads": 2,
                            "intermediate_size": 64},
    "mask_decoder_config": {"hidden_size": 32, "num_attention_heads": 2},
}

SIZES = {"full": {}, "tiny": TINY}


def sam3_config(size: str | dict = "full"):
    """A ``Sam3Config``: ``"full"`` (the official model, ``model_builder.py``'s sizes), ``"tiny"`` (:data:`TINY`) or
    a dict of ``Sam3Config`` arguments (a ``config.json``'s content)."""
    require_transformers()
    from transformers import Sam3Config

    fields = SIZES[size] if isinstance(size, str) else dict(size)
    if fields.get("model_type") == "sam3_video" or "detector_config" in fields:  # the Hub's video config
        fields = dict(fields.get("detector_config") or {})
    fields = {k: v for k, v in fields.items() if k not in ("model_type", "architectures", "transformers_version")}
    return Sam3Config(**fields)


def random_sam3(size: str | dict = "tiny", seed: int = 0, device: str | torch.device = "cpu"):
    """A SAM 3 with random weights (seeded): the tests' and the benchmarks' model."""
    require_transformers()
    from transformers import Sam3Model

    torch.manual_seed(seed)
    return Sam3Model(sam3_config(size)).to(device).eval()


# ----------------------------------------------------------------------------------------------------------------
# The official checkpoint's names -> transformers' names

#: (pattern, replacement) applied in order to every official key (after ``detector.`` is stripped); the module
#: names on the left are those of facebookresearch/sam3 (model_builder.py), those on the right transformers'
#: ``Sam3Model``. Keys matching :data:`_OFFICIAL_DROPPED` have no counterpart (computed buffers, point prompts).
_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    # vision: ViT trunk
    (r"^backbone\.vision_backbone\.trunk\.", "vision_encoder.backbone."),
    (r"^(vision_encoder\.backbone\.)pos_embed$", r"\1embeddings.position_embeddings"),
    (r"^(vision_encoder\.backbone\.)patch_embed\.proj\.", r"\1embeddings.patch_embeddings.projection."),
    (r"^(vision_encoder\.backbone\.)ln_pre\.", r"\1layer_norm."),
    (r"^(vision_encoder\.backbone\.)blocks\.(\d+)\.norm(\d)\.", r"\1layers.\2.layer_norm\3."),
    (r"^(vision_encoder\.backbone\.)blocks\.(\d+)\.attn\.proj\.", r"\1layers.\2.attention.o_proj."),
    (r"^(vision_encoder\.backbone\.)blocks\.(\d+)\.attn\.qkv\.", r"\1layers.\2.attention.qkv."),
    (r"^(vision_encoder\.backbone\.)blocks\.(\d+)\.mlp\.", r"\1layers.\2.mlp."),
    # vision: FPN neck (scale 4: two transposed convolutions around a GELU; 2: one; 0.5: a max-pool, no weights)
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.", r"vision_encoder.neck.fpn_layers.\1."),
    (r"^(vision_encoder\.neck\.fpn_layers\.\d+\.)dconv_2x2(_0)?\.", r"\1scale_layers.0."),
    (r"^(vision_encoder\.neck\.fpn_layers\.\d+\.)dconv_2x2_1\.", r"\1scale_layers.2."),
    (r"^(vision_encoder\.neck\.fpn_layers\.\d+\.)conv_1x1\.", r"\1proj1."),
    (r"^(vision_encoder\.neck\.fpn_layers\.\d+\.)conv_3x3\.", r"\1proj2."),
    # text: an open_clip-style CLIP text transformer and the resizer to the DETR width
    (r"^backbone\.language_backbone\.resizer\.", "text_projection."),
    (r"^backbone\.language_backbone\.encoder\.", "text_encoder."),
    (r"^text_encoder\.token_embedding\.", "text_encoder.text_model.embeddings.token_embedding."),
    (r"^text_encoder\.positional_embedding$", "text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^text_encoder\.ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (r"^text_encoder\.text_projection$", "text_encoder.text_projection.weight"),
    (r"^text_encoder\.transformer\.resblocks\.(\d+)\.", r"text_encoder.text_model.encoder.layers.\1."),
    (r"^(text_encoder\.text_model\.encoder\.layers\.\d+\.)attn\.", r"\1self_attn."),
    (r"^(text_encoder\.text_model\.encoder\.layers\.\d+\.)ln_(\d)\.", r"\1layer_norm\2."),
    (r"^(text_encoder\.text_model\.encoder\.layers\.\d+\.)mlp\.c_fc\.", r"\1mlp.fc1."),
    (r"^(text_encoder\.text_model\.encoder\.layers\.\d+\.)mlp\.c_proj\.", r"\1mlp.fc2."),
    # geometry encoder (its CLS token joins every text prompt)
    (r"^geometry_encoder\.encode\.(\d+)\.", r"geometry_encoder.layers.\1."),
    (r"^geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    # DETR encoder and decoder
    (r"^transformer\.encoder\.", "detr_encoder."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.(\d)\.", lambda m: f"detr_decoder.presence_head.layer{int(m[1]) + 1}."),
    (r"^transformer\.decoder\.presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (r"^transformer\.decoder\.norm\.", "detr_decoder.output_layer_norm."),
    (r"^transformer\.decoder\.bbox_embed\.layers\.(\d)\.", lambda m: f"detr_decoder.box_head.layer{int(m[1]) + 1}."),
    (r"^transformer\.decoder\.ref_point_head\.layers\.(\d)\.",
     lambda m: f"detr_decoder.ref_point_head.layer{int(m[1]) + 1}."),
    (r"^transformer\.decoder\.boxRPB_embed_([xy])\.layers\.(\d)\.",
     lambda m: f"detr_decoder.box_rpb_embed_{m[1]}.layer{int(m[2]) + 1}."),
    (r"^transformer\.decoder\.", "detr_decoder."),
    # the layers of the geometry encoder and the DETR encoder/decoder share their sub-module names
    (r"^((?:geometry_encoder|detr_encoder|detr_decoder)\.layers\.\d+\.)cross_attn_image\.", r"\1cross_attn."),
    (r"^((?:geometry_encoder|detr_encoder|detr_decoder)\.layers\.\d+\.)linear(\d)\.", r"\1mlp.fc\2."),
    (r"^((?:geometry_encoder|detr_encoder)\.layers\.\d+\.)norm(\d)\.", r"\1layer_norm\2."),
    # scoring of each query against the prompt
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.(\d)\.", lambda m: f"dot_product_scoring.text_mlp.layer{int(m[1]) + 1}."),
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    # mask decoder: pixel decoder, instance and semantic heads, the prompt cross-attention
    (r"^segmentation_head\.mask_predictor\.mask_embed\.", "mask_decoder.mask_embedder."),
    (r"^segmentation_head\.instance_seg_head\.", "mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
    (r"^segmentation_head\.", "mask_decoder."),
    # attention output projections are o_proj everywhere but in the CLIP text encoder
    (r"^((?!text_encoder\.).*)\.out_proj\.", r"\1.o_proj."),
)

#: Official keys with no counterpart: the ViT's precomputed RoPE table (recomputed by transformers) and the point
#: prompt encoders (transformers' SAM 3 takes boxes and text only; SegEarth-OV3 gives neither points nor boxes).
_OFFICIAL_DROPPED = re.compile(r"(\.attn\.freqs_cis$|^geometry_encoder\.points_)")

_COMPILED = tuple((re.compile(p), r) for p, r in _OFFICIAL_RENAMES)


def official_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official SAM 3 image model's state dict (``detector.`` stripped) under transformers' ``Sam3Model`` names.

    Besides the renames: fused ``qkv`` / ``in_proj`` weights are split into ``q``/``k``/``v`` projections, the ViT's
    position table loses its CLS row (pretrained with one, never used: ``retain_cls_token=False``), and the text
    projection, stored as ``x @ W`` by open_clip, is transposed to a ``Linear`` weight. Tensors are views where
    possible (a memory-mapped file is not copied here)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _OFFICIAL_DROPPED.search(key):
            continue
        for pattern, repl in _COMPILED:
            key = pattern.sub(repl, key)
        if key.endswith("embeddings.position_embeddings") and key.startswith("vision_encoder."):
            value = value[:, 1:]
        elif key == "text_encoder.text_projection.weight":
            value = value.t()
        fused = re.match(r"^(.*\.)(?:qkv\.(weight|bias)|in_proj_(weight|bias))$", key)
        if fused:
            kind = fused[2] or fused[3]
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{fused[1]}{name}_proj.{kind}"] = part
            continue
        out[key] = value
    return out


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """``(form, image-model state)`` of a SAM 3 state dict: ``"official"`` (``detector.*`` or bare official names;
    the tracker's keys dropped), ``"transformers"`` (``detector_model.*`` or bare ``Sam3Model`` names), or
    ``(None, {})`` for anything else."""
    def strip(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    official = strip("detector.") or state
    if any(k.startswith("backbone.vision_backbone.") for k in official):
        return "official", {k: v for k, v in official.items() if not k.startswith("tracker.")}
    hf = strip("detector_model.") or state
    if any(k.startswith("vision_encoder.backbone.") for k in hf):
        return "transformers", {k: v for k, v in hf.items() if not k.startswith(("tracker_model.", "tracker_neck."))}
    return None, {}


# ----------------------------------------------------------------------------------------------------------------
# Loading

@dataclass
class Sam3Source:
    """Where a SAM 3 came from (recorded with the numbers it makes)."""
    name: str                           # the file, folder or registry name given
    form: str                           # official | transformers | random
    config: dict                        # the Sam3Config's sub-sizes that differ from the official ones

    def to_dict(self) -> dict:
        return {"sam3": self.name, "form": self.form, "config": self.config}


def load_sam3(source: str | Path, *, device: str | torch.device = "cpu", config: str | dict | None = None):
    """``(model, Sam3Source)``: a SAM 3 from a file (``sam3.pt``, official or transformers ``.safetensors``), a
    folder of the Hub's files, or the registry name ``sam3``, in eval mode on ``device``.

    ``config``: the model's size (:func:`sam3_config`); default the ``config.json`` beside the file (the Hub's
    layout), else the official size. Raises :class:`Sam3CheckpointError` with one line for anything that is not a
    SAM 3 (a CLIP checkpoint, a truncated file, a gated or offline Hub file)."""
    require_transformers()
    path = _resolve(source)
    state = _read_state(path)
    form, state = split_checkpoint(state)
    if form is None:
        raise Sam3CheckpointError(f"{source}: not a SAM 3 checkpoint (no SAM 3 vision encoder among its "
                                  f"{len(_read_keys_hint(path))} tensors; SAM 3 protocols take sam3.pt, the Hub's "
                                  "facebook/sam3 files or the name sam3 as --checkpoint)")
    if form == "official":
        state = official_to_transformers(state)
    cfg_fields = config if config is not None else _config_beside(path)
    model = _build(state, cfg_fields, source)
    model.to(device).eval()
    origin = Sam3Source(str(source), form, _size_summary(cfg_fields))
    model.farslip_sam3 = origin.to_dict()  # recorded beside the numbers the model makes
    return model, origin


def _resolve(source: str | Path) -> Path:
    """A local path for ``source``: the file or folder itself, or the registry name's Hub files."""
    path = Path(source)
    if path.exists():
        return path
    if str(source).lower() == SAM3_NAME:
        return fetch_sam3()
    raise Sam3CheckpointError(f"{source}: no such file or folder (and not a SAM 3 registry name: {SAM3_NAME})")


def fetch_sam3(repo: str = SAM3_HUB_REPO, revision: str = "main", cache_dir=None) -> Path:
    """The folder of facebook/sam3's ``config.json`` and ``model.safetensors`` in the Hugging Face cache, downloaded
    on first use with the standard Hub token (the repository is gated: accept its terms on the Hub first)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    where = f"{SAM3_NAME}: {repo}"
    try:
        paths = [Path(hf_hub_download(repo, f, revision=revision, cache_dir=cache_dir, library_name="farslip"))
                 for f in SAM3_HUB_FILES]
    except GatedRepoError:
        raise Sam3CheckpointError(f"{where} is gated: accept its terms on huggingface.co/{repo} and log in "
                                  "(`hf auth login` or HF_TOKEN), or pass a downloaded sam3.pt") from None
    except LocalEntryNotFoundError:
        raise Sam3CheckpointError(f"{where}: the files are not in the local Hugging Face cache and the Hub cannot "
                                  "be reached (offline or HF_HUB_OFFLINE set); run once with network access or "
                                  "pass a downloaded sam3.pt") from None
    except RepositoryNotFoundError:
        raise Sam3CheckpointError(f"{where}: repository not found (or gated and no token given: log in with "
                                  "`hf auth login` or HF_TOKEN)") from None
    except EntryNotFoundError as exc:
        raise Sam3CheckpointError(f"{where}: a file is missing from the repository ({exc})") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise Sam3CheckpointError(f"{where}: the Hub answered {status} ({str(exc).splitlines()[0]})") from None
    return paths[0].parent


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a file, or of the ``*.safetensors`` files of a folder (memory-mapped where possible)."""
    from .checkpoint_io import read_checkpoint

    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise Sam3CheckpointError(f"{path}: a folder without .safetensors files (the Hub's SAM 3 folder holds "
                                      "config.json and model.safetensors)")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(read_checkpoint(f, mmap=True)[0])
        return state
    return read_checkpoint(path, mmap=True)[0]


def _read_keys_hint(path: Path) -> list[str]:
    try:
        return list(_read_state(path))
    except CheckpointError:
        return []


def _config_beside(path: Path) -> dict | None:
    """The ``config.json`` of the folder (or beside the file) when it describes a SAM 3; None otherwise."""
    candidate = (path if path.is_dir() else path.parent) / "config.json"
    if not candidate.is_file():
        return None
    try:
        fields = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Sam3CheckpointError(f"{candidate}: not a readable JSON config ({exc})") from None
    if not isinstance(fields, dict) or fields.get("model_type") not in ("sam3", "sam3_video"):
        return None
    return fields


def _size_summary(fields: dict | None) -> dict:
    if fields is None:
        return {}
    if isinstance(fields, str):
        return {"size": fields}
    return {k: v for k, v in fields.items() if k.endswith("_config") or k == "detector_config"}


def _build(state: dict[str, torch.Tensor], cfg_fields, source):
    """A ``Sam3Model`` of ``cfg_fields``'s size holding ``state``: every weight present with its shape, nothing
    else; the computed buffers (RoPE tables, position ids) made by transformers."""
    from transformers import Sam3Model
    from transformers.utils import logging as hf_logging

    config = sam3_config(cfg_fields if cfg_fields is not None else "full")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Sam3Model(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} weight(s) missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unknown (e.g. {unexpected[0]})"] if unexpected else []
        parts += [f"{len(wrong)} of another shape (e.g. {wrong[0]}: {tuple(state[wrong[0]].shape)}, expected "
                  f"{expected[wrong[0]]})"] if wrong else []
        hint = ("it does not fit the config.json given with it" if cfg_fields is not None else
                "not the official SAM 3 size: a SAM 3 of another size needs its config.json beside the file")
        raise Sam3CheckpointError(f"{source}: {'; '.join(parts)} -- {hint}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = Sam3Model.from_pretrained(None, config=config, state_dict=state)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model


@functools.lru_cache(maxsize=1)
def sam3_tokenizer():
    """SAM 3's tokenizer: OpenAI CLIP's BPE (the vocabulary open_clip ships, as the official ``SimpleTokenizer``)
    with ``<start>`` + tokens + ``<end>``, zero-padded to :data:`SAM3_CONTEXT` positions."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=SAM3_CONTEXT)


def prompt_length(tokenizer, text: str) -> int:
    """Positions ``text`` takes in SAM 3's text encoder (its tokens plus the start and end tokens)."""
    return len(tokenizer.encode(text)) + 2


def describe_source(model, source: Any = None) -> dict:
    """What to record about a SAM 3 beside the numbers it made."""
    n = sum(p.numel() for p in model.parameters())
    return {**(source.to_dict() if isinstance(source, Sam3Source) else {"sam3": str(source)}), "parameters": n}
