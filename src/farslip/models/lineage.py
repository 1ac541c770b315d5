"""What a checkpoint was trained with that its tensors do not say: the MLP activation, and -- for reproducing
RS-OVSS's rows exactly -- the text length RS-OVSS gives each method by name.

Activation. OpenAI's CLIP and every CLIP fine-tuned from it (FarSLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP) use
QuickGELU; open_clip's own trainings (laion2b_*, datacomp_*, ...) use GELU. A state dict holds no trace of which,
so :func:`choose_quick_gelu` decides in this order: the caller's explicit choice; the setting a farslip
checkpoint records; an open_clip pretrained tag's own (``openai`` -> QuickGELU, laion tags -> GELU); an OpenAI
TorchScript archive (QuickGELU); the architecture name's (``*-quickgelu``); and for any other file QuickGELU (the
OpenAI lineage the RS CLIPs share) with a warning that this is a guess.

RS-OVSS method names. RS-OVSS (customized_segmentor.py, ``MODEL_CONFIG``) does not read the text length off the
file: it builds the text tower with 248 positions for ``FarSLIP2`` and ``LRSCLIP`` (``long_clip=
'load_from_scratch'``) and 77 for every other method, loads with ``strict=False`` and linearly resizes a
checkpoint's ``positional_embedding`` to the built length (open_clip fork ``resize_text_pos_embed``); and it
forces QuickGELU only for FarSLIP1/2 and LRSCLIP (RemoteCLIP, GeoRSCLIP and SkyCLIP run with their config's
GELU there). :data:`RS_OVSS_METHODS` holds that table; ``load_model(..., rs_ovss_method=NAME)`` loads as RS-OVSS
does for NAME, so each row of the paper's table can be rebuilt as it was made.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F

from .checkpoint_io import CheckpointError
from .long_text import KEEP_ROWS, LONG_CONTEXT


def choose_quick_gelu(explicit: bool | None, arch: str, *, recorded: bool | None = None,
                      pretrained_tag: str | None = None, torchscript: bool = False,
                      checkpoint: str | None = None) -> bool:
    """QuickGELU or not for ``arch`` loaded from this source (see the module docstring for the order). An explicit
    choice the weights' lineage contradicts (a laion tag forced to QuickGELU, an OpenAI archive forced to GELU)
    is kept, with a warning: the model then computes another function than the one its weights were trained in."""
    if recorded is not None:
        if explicit is not None and explicit != recorded:
            warnings.warn(f"{checkpoint}: the checkpoint records quick_gelu={recorded}; using it, not the "
                          f"requested {explicit}", UserWarning, stacklevel=3)
        return bool(recorded)
    lineage = None
    if pretrained_tag is not None:
        cfg = open_clip.get_pretrained_cfg(arch, pretrained_tag) or {}
        lineage = (bool(cfg.get("quick_gelu", False)), f"open_clip's {arch} {pretrained_tag!r} weights")
    elif torchscript:
        lineage = (True, f"{checkpoint} (an OpenAI TorchScript archive)")
    if explicit is not None:
        if lineage is not None:
            warn_if_contradicted(explicit, *lineage)
        return bool(explicit)
    if lineage is not None:
        return lineage[0]
    own = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    if checkpoint is None or own:
        return own
    warnings.warn(f"{checkpoint}: the file does not say which activation it was trained with; assuming QuickGELU "
                  "(OpenAI lineage: FarSLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP). For GELU weights (open_clip's own "
                  "trainings) pass quick_gelu=False / --no-quick-gelu.", UserWarning, stacklevel=3)
    return True


def follow_entry(explicit: bool | None, entry_quick_gelu: bool, name: str) -> bool:
    """A released model's activation (the registry's), or the caller's explicit choice with a warning when the
    two differ."""
    if explicit is None:
        return entry_quick_gelu
    warn_if_contradicted(explicit, entry_quick_gelu, f"the released model {name}")
    return bool(explicit)


def warn_if_contradicted(explicit: bool, lineage: bool, weights: str) -> None:
    if bool(explicit) != lineage:
        warnings.warn(f"quick_gelu={bool(explicit)} contradicts {weights}, trained with "
                      f"{'QuickGELU' if lineage else 'GELU'}: the model will compute another activation than its "
                      f"weights learned (leave quick_gelu unset to follow the weights)", UserWarning, stacklevel=4)


@dataclass(frozen=True)
class RSOVSSMethod:
    """How RS-OVSS's ``CustomizedSegmentation`` builds one ``--method``'s model."""
    context_length: int
    quick_gelu: bool


#: RS-OVSS customized_segmentor.py ``MODEL_CONFIG`` (methods absent there get 77 positions and no forced
#: QuickGELU); ``CLIP`` is its ``--method CLIP --pretrained FILE`` path with the default flags, ``CLIP-long`` the
#: same with ``--long-clip load_from_scratch``.
RS_OVSS_METHODS: dict[str, RSOVSSMethod] = {
    "FarSLIP1": RSOVSSMethod(77, True),
    "FarSLIP2": RSOVSSMethod(LONG_CONTEXT, True),
    "FarSLIP2-VC": RSOVSSMethod(77, True),
    "LRSCLIP": RSOVSSMethod(LONG_CONTEXT, True),
    "RemoteCLIP": RSOVSSMethod(77, False),
    "GeoRSCLIP": RSOVSSMethod(77, False),
    "SkyCLIP": RSOVSSMethod(77, False),
    "CLIP": RSOVSSMethod(77, False),
    "CLIP-long": RSOVSSMethod(LONG_CONTEXT, False),
}


def rs_ovss_method(name: str) -> RSOVSSMethod:
    for key, method in RS_OVSS_METHODS.items():
        if key.lower() == name.lower():
            return method
    raise ValueError(f"unknown RS-OVSS method {name!r}; known: {', '.join(RS_OVSS_METHODS)}")


def resize_text_positions(state: dict[str, torch.Tensor], context_length: int,
                          source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The raw (unfolded) state dict as RS-OVSS's ``create_model(..., long_clip=...)`` + ``strict=False`` load
    leaves the text positions of a model built with ``context_length`` rows.

    * 77 rows built: ``positional_embedding`` is linearly resized to 77 (``F.interpolate``, ``linear``,
      ``align_corners=False``) and a long-text ``positional_embedding_res`` is dropped (an unexpected key there);
    * 248 rows built: a 248-row pair is used as it is (rows 0..19 of the first, 20..247 of the second); a
      shorter checkpoint is refused -- RS-OVSS would leave ``positional_embedding_res`` uninitialised memory.
    """
    pos = state.get("positional_embedding")
    if pos is None:
        return state
    state = dict(state)
    if context_length == LONG_CONTEXT:
        if pos.shape[0] != LONG_CONTEXT or "positional_embedding_res" not in state:
            raise CheckpointError(f"{source}: {pos.shape[0]} text positions without a 248-row "
                                  "positional_embedding_res; RS-OVSS's long-text build would run on uninitialised "
                                  "rows 20..247 for it, which cannot be reproduced (use 77 positions)")
        return state
    state.pop("positional_embedding_res", None)
    if pos.shape[0] != context_length:
        resized = F.interpolate(pos.float().T[None], size=context_length, mode="linear", align_corners=False)
        state["positional_embedding"] = resized[0].T.to(pos.dtype).contiguous()
    return state


__all__ = ["KEEP_ROWS", "RS_OVSS_METHODS", "RSOVSSMethod", "choose_quick_gelu", "follow_entry", "resize_text_positions",
           "rs_ovss_method", "warn_if_contradicted"]
