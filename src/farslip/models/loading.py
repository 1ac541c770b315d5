"""``load_model``: any open_clip ViT CLIP from any checkpoint form, returned as a stock open_clip model.

The architecture, image size and context length are read off the tensor shapes, so a FarSLIP long-text
checkpoint, RemoteCLIP, GeoRSCLIP, SkyCLIP or an OpenAI archive loads with just its ViT name, and farslip's own
checkpoints load with no name at all (they carry their model config).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from ..core.errors import UsageError
from . import lineage
from .checkpoint_io import CheckpointError, is_torchscript_archive, read_checkpoint, write_checkpoint
from .hub import fetch_weights
from .long_text import KEEP_ROWS, LONG_CONTEXT, fold_long_text_state, freeze_leading_text_rows
from .registry import find_entry
from .towers import text_tower

_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_registered_dir: Path | None = None


def register_model_configs() -> None:
    """Make farslip's own architectures (e.g. the quickstart's tiny ViT) known to open_clip by name."""
    if _CONFIG_DIR.is_dir() and _CONFIG_DIR not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(_CONFIG_DIR)


def register_model_config(name: str, cfg: dict[str, Any]) -> None:
    """Register one architecture config under ``name`` through open_clip's public mechanism."""
    global _registered_dir
    if _registered_dir is None:
        _registered_dir = Path(tempfile.mkdtemp(prefix="farslip-model-configs-"))
    (_registered_dir / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(_registered_dir)


def _arch_for_embedded_config(arch: str, cfg: dict[str, Any] | None) -> str:
    """The name to build a farslip checkpoint under: ``arch`` when it is unknown (registered from the checkpoint) or
    registered with the same config; otherwise -- the name now means another config, e.g. after an upgrade changed
    it -- the checkpoint's own config under a derived name, so self-describing checkpoints keep loading."""
    if not cfg:
        return arch
    known = open_clip.get_model_config(arch)
    if known is None:
        register_model_config(arch, cfg)
        return arch
    if json.dumps(known, sort_keys=True) == json.dumps(cfg, sort_keys=True):
        return arch
    derived = f"{arch}-ckpt-{hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]}"
    if open_clip.get_model_config(derived) is None:
        register_model_config(derived, cfg)
    return derived


# ----------------------------------------------------------------------------------------------------------------
# Reading the architecture off the weights

def describe_state_dict(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Shape facts of a CLIP state dict: the numbers that decide which architecture fits it."""
    def count_blocks(prefix: str) -> int:
        idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        return max(idx) + 1 if idx else 0

    facts: dict[str, int] = {}
    if "visual.conv1.weight" in state:
        conv = state["visual.conv1.weight"]
        facts["vision_width"], facts["patch_size"] = conv.shape[0], conv.shape[-1]
        facts["vision_layers"] = count_blocks("visual.transformer.resblocks.")
    if "visual.positional_embedding" in state and "visual.conv1.weight" in state:  # a ViT (not a ModifiedResNet)
        grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
        facts["image_size"] = grid * facts["patch_size"]
    if "token_embedding.weight" in state:
        facts["vocab_size"], facts["text_width"] = state["token_embedding.weight"].shape
        facts["text_layers"] = count_blocks("transformer.resblocks.")
        facts["context_length"] = state["positional_embedding"].shape[0]
    if "text_projection" in state:
        facts["embed_dim"] = state["text_projection"].shape[-1]
    elif "visual.proj" in state:
        facts["embed_dim"] = state["visual.proj"].shape[-1]
    return facts


def _config_facts(cfg: dict[str, Any]) -> dict[str, int] | None:
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in v or "hf_model_name" in t or cfg.get("custom_text"):
        return None
    return {
        "vision_width": v.get("width", 768), "patch_size": v.get("patch_size", 16),
        "vision_layers": v.get("layers", 12), "vocab_size": t.get("vocab_size", 49408),
        "text_width": t.get("width", 512), "text_layers": t.get("layers", 12), "embed_dim": cfg.get("embed_dim"),
    }


def architectures_fitting(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the registered open_clip architectures whose shapes fit these weights."""
    facts = describe_state_dict(state)
    fitting = []
    for name in open_clip.list_models():
        cfg_facts = _config_facts(open_clip.get_model_config(name) or {})
        if cfg_facts and all(facts.get(k) == val for k, val in cfg_facts.items() if k in facts):
            fitting.append(name)
    # Plain names first (ViT-B-16 before ViT-B-16-quickgelu or variants).
    return sorted(fitting, key=lambda n: (n.count("-"), len(n), n))


# ----------------------------------------------------------------------------------------------------------------

def load_model(arch: str | None = None, checkpoint: str | os.PathLike | None = None, *, device: str = "cpu",
               precision: str = "fp32", quick_gelu: bool | None = None, context_length: int | None = None,
               rs_ovss_method: str | None = None):
    """Build a stock open_clip CLIP and load weights from any supported checkpoint.

    Args:
        arch: open_clip architecture name (``ViT-B-16``); optional for farslip checkpoints and for foreign ones
            whose shapes fit exactly one architecture family. A registry name alone (``load_model("farslip2-vit-b-16")``)
            is read as ``checkpoint``.
        checkpoint: a registry name (``farslip2-vit-b-16``, see ``farslip model list``: downloaded through the
            Hugging Face cache), an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``) or a local file:
            raw state dict, ``{"state_dict": ...}`` (DDP prefix or not), FarSLIP long-text, OpenAI TorchScript,
            safetensors, or farslip's own. ``None`` gives random initialisation.
        quick_gelu: QuickGELU activations or GELU; None (default) chooses by the weights: the registry entry's,
            a farslip checkpoint's record, the pretrained tag's own, QuickGELU for OpenAI archives, and for other
            files QuickGELU with a warning that it is a guess (:func:`farslip.models.lineage.choose_quick_gelu`).
        context_length: text positions; by default read off the weights (77 or 248).
        rs_ovss_method: load as RS-OVSS builds that ``--method`` (``FarSLIP2``, ``GeoRSCLIP``, ...): its text
            length by name with the file's text positions resized to it, and its activation unless
            ``quick_gelu`` is given (:data:`farslip.models.lineage.RS_OVSS_METHODS`).

    Returns:
        ``(model, preprocess_train, preprocess_eval, tokenizer)``; the tokenizer matches the context length.
    """
    register_model_configs()
    if checkpoint is None and find_entry(arch) is not None:
        arch, checkpoint = None, arch
    entry = find_entry(checkpoint)
    if entry is not None:
        arch = arch or entry.arch
        quick_gelu = lineage.follow_entry(quick_gelu, entry.quick_gelu, entry.name)
        checkpoint = entry.open_clip_tag or fetch_weights(entry)
    state, meta = None, {}
    pretrained_tag = None
    if checkpoint is not None and (os.path.exists(checkpoint) or os.sep in str(checkpoint)
                                   or str(checkpoint).endswith((".pt", ".pth", ".bin", ".safetensors"))):
        state, meta = read_checkpoint(checkpoint)
        if rs_ovss_method is not None:
            method = lineage.rs_ovss_method(rs_ovss_method)
            state = lineage.resize_text_positions(state, method.context_length, source=str(checkpoint))
            context_length = method.context_length
            quick_gelu = method.quick_gelu if quick_gelu is None else quick_gelu
        state = fold_long_text_state(state)
    elif checkpoint is not None:
        pretrained_tag = str(checkpoint)

    if meta:
        arch = arch or meta["arch"]
        arch = _arch_for_embedded_config(arch, meta.get("model_cfg"))
    if arch is None:
        if pretrained_tag is not None:
            raise CheckpointError(f"{pretrained_tag}: not a file and not a released model's name (farslip model "
                                  "list); an open_clip pretrained tag also needs the architecture (--model)")
        if state is None:
            raise UsageError("load_model needs an architecture name unless the checkpoint describes itself")
        fitting = architectures_fitting(state)
        if not fitting:
            raise CheckpointError(f"{checkpoint}: no registered architecture fits these weights "
                                  f"({describe_state_dict(state)})")
        arch = fitting[0]
    if open_clip.get_model_config(arch) is None:
        raise UsageError(f"unknown architecture {arch!r}; known: {', '.join(open_clip.list_models())}")
    if pretrained_tag is not None and pretrained_tag not in open_clip.list_pretrained_tags_by_model(arch):
        raise CheckpointError(f"{pretrained_tag}: not a file, not a released model's name (farslip model list) and "
                              f"not an open_clip pretrained tag of {arch} "
                              f"({', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'it has none'})")
    source = str(checkpoint) if state is not None else None
    quick_gelu = lineage.choose_quick_gelu(quick_gelu, arch, recorded=meta.get("quick_gelu"), checkpoint=source,
                                           pretrained_tag=pretrained_tag,
                                           torchscript=source is not None and is_torchscript_archive(Path(source)))

    facts = describe_state_dict(state) if state is not None else {}
    ctx = context_length or facts.get("context_length")
    image_size = facts.get("image_size")
    cfg = open_clip.get_model_config(arch)
    # Before the model is built: a tokenizer that cannot be had is a one-line error, not one after a long load.
    tokenizer = get_tokenizer(arch, ctx or cfg.get("text_cfg", {}).get("context_length"))
    if image_size == cfg["vision_cfg"].get("image_size"):
        image_size = None

    def create(device: str):
        with _quiet_random_init_warning(state is not None), torch.device(device):
            return open_clip.create_model_and_transforms(
                arch, pretrained=pretrained_tag, precision="fp32", device=device, force_image_size=image_size,
                force_context_length=ctx, quick_gelu=quick_gelu)

    if state is None:
        model, preprocess_train, preprocess_eval = create("cpu")
    else:
        # Built on the meta device and given the checkpoint's tensors (assign): the weights exist once, not twice
        # (a random initialisation plus the checkpoint), which halves the loading peak of memory.
        model, preprocess_train, preprocess_eval = create("meta")
        load_state_strict(model, state, arch, source=str(checkpoint), assign=True)
        if not _materialize_masks(model):  # an architecture with other non-persistent state: build it for real
            model, preprocess_train, preprocess_eval = create("cpu")
            load_state_strict(model, state, arch, source=str(checkpoint))
    if getattr(text_tower(model), "positional_embedding", torch.empty(0)).shape[0] == LONG_CONTEXT:
        freeze_leading_text_rows(model, KEEP_ROWS)
    model.farslip_arch = arch
    model.farslip_quick_gelu = quick_gelu
    model.farslip_name = entry.name if entry is not None else None
    model = _set_precision(model.to(device), precision)
    return model, preprocess_train, preprocess_eval, tokenizer


def get_tokenizer(arch: str, context_length: int | None = None):
    """open_clip's tokenizer for ``arch``. SigLIP's and SigLIP 2's come from the Hugging Face Hub (``transformers``,
    kept in the Hugging Face cache after the first download): one that is neither cached nor reachable is a
    one-line error."""
    try:
        return open_clip.get_tokenizer(arch, context_length=context_length)
    except OSError as exc:
        name = ((open_clip.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name") or arch
        raise UsageError(f"{arch}'s tokenizer {name} is on the Hugging Face Hub and could not be fetched "
                         f"({str(exc).splitlines()[0]}); run once with network access (it is then kept in the "
                         "Hugging Face cache, HF_HOME / HF_HUB_CACHE), or point HF_HUB_CACHE at a cache that "
                         "holds it") from None


@contextlib.contextmanager
def _quiet_random_init_warning(active: bool):
    """open_clip warns "initialized randomly" when it builds a model without a pretrained tag; when the weights come
    from a checkpoint right after, that warning is false and alarms users, so it is dropped (only then)."""
    def drop(record: logging.LogRecord) -> bool:
        return not (active and "Model initialized randomly" in record.getMessage())

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _set_precision(model: nn.Module, precision: str) -> nn.Module:
    if precision in ("fp32", "amp", "amp_bf16", "amp_fp16"):
        return model
    dtypes = {"bf16": torch.bfloat16, "pure_bf16": torch.bfloat16, "fp16": torch.float16, "pure_fp16": torch.float16}
    if precision not in dtypes:
        raise UsageError(f"precision must be one of fp32, bf16, fp16, amp, amp_bf16; got {precision!r}")
    return model.to(dtypes[precision])


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], arch: str, source: str,
                      assign: bool = False) -> None:
    """Load weights, or fail naming the missing, unexpected and mis-shaped keys and the architectures that fit.

    ``assign``: the model's tensors become the checkpoint's (cast to the model's dtypes) instead of copies --
    for a model built on the meta device."""
    own = model.state_dict()
    for name in ("logit_scale", "logit_bias"):  # scalar or one element (open_clip's nonscalar_logit_scale, FSDP)
        if name in state and name in own and state[name].ndim != own[name].ndim and state[name].numel() == 1:
            state = {**state, name: state[name].reshape(own[name].shape)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        lines = [f"{source} does not fit architecture {arch}:"]
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                lines.append(f"  {label} keys ({len(keys)}): {_abbrev(keys)}")
        if misshaped:
            shown = [f"{k} checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in misshaped[:8]]
            lines.append(f"  mis-shaped keys ({len(misshaped)}): " + "; ".join(shown))
        fits = architectures_fitting(state)
        lines.append(f"  architectures whose shapes fit: {', '.join(fits[:12]) if fits else 'none registered'}")
        raise CheckpointError("\n".join(lines))
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    if assign:
        state = _independent(state)
    model.load_state_dict(state, strict=True, assign=assign)


def _independent(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors that can become parameters as they are: a tensor sharing its storage with another entry (views of
    one buffer in some checkpoints) or not contiguous is copied, so that updating one parameter never writes into
    another. Ordinary checkpoints (torch.save, safetensors) have one storage per tensor and are not copied."""
    users: dict[int, int] = {}
    for v in state.values():
        users[v.untyped_storage().data_ptr()] = users.get(v.untyped_storage().data_ptr(), 0) + 1
    return {k: v if v.is_contiguous() and users[v.untyped_storage().data_ptr()] == 1
            else v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}


def _materialize_masks(model: nn.Module) -> bool:
    """Give a meta-built model the only state a checkpoint does not hold in open_clip's ViT CLIPs: the text
    tower's causal ``attn_mask`` (a non-persistent buffer). False if anything else is still on the meta device."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta and name == "attn_mask" and buf.dim() == 2:
                module._buffers[name] = torch.full(tuple(buf.shape), float("-inf")).triu_(1)
    return not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _abbrev(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def drop_text_tower(model: nn.Module) -> int:
    """Free the text encoder of a model that will only encode images from now on (its text embeddings computed):
    the transformer and the token embedding, about 250 MB of a ViT-B-16's 600. ``encode_text`` fails after
    this. Returns the number of parameters freed."""
    freed = 0
    for name in ("transformer", "token_embedding", "text"):  # CLIP's text tower; CustomTextCLIP's is ``text``
        part = getattr(model, name, None)
        if isinstance(part, nn.Module) and part is not getattr(model, "visual", None):
            freed += sum(p.numel() for p in part.parameters())
            setattr(model, name, None)
    model.farslip_text_dropped = True
    return freed


def model_meta(model: nn.Module) -> dict[str, Any]:
    """What load_model needs to rebuild ``model`` from its weights alone."""
    arch = getattr(model, "farslip_arch", None)
    if arch is None:
        raise ValueError("model was not created by farslip.load_model; pass arch to save_model")
    return {"format": "farslip", "version": 1, "arch": arch, "model_cfg": open_clip.get_model_config(arch),
            "quick_gelu": getattr(model, "farslip_quick_gelu", True), "context_length": int(model.context_length)}


def save_model(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None,
               state_dict: dict[str, torch.Tensor] | None = None):
    """Write a self-describing checkpoint (``.safetensors`` or torch) that ``load_model(checkpoint=path)`` reads.
    ``state_dict``: the weights to write, when the model's own are sharded (FSDP's gathered full state)."""
    model = getattr(model, "module", model)
    return write_checkpoint(path, model.state_dict() if state_dict is None else state_dict, model_meta(model), extra)


def weights_fingerprint(model: nn.Module) -> str:
    """A short SHA-256 of a model's architecture name and every tensor of its state (names, shapes, dtypes and
    bytes): the same weights give the same fingerprint, other weights another. About a second for a
    ViT-B on a CPU; used where a model given in memory must be told apart from another (completion records)."""
    import hashlib

    h = hashlib.sha256(str(getattr(model, "farslip_arch", type(model).__name__)).encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
