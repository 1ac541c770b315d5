"""What a protocol needs besides the user's model, set up once per run: the model the windows go through (a
float16 copy where the protocol runs the official half model), the dtype of the logits, the input size windows
are resized to, and the SimFeatUp upsampler."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import open_clip
import torch
from torch import nn

from ..models.precision import Amp, model_device, model_dtype
from ..models.towers import joint_dim
from .images import model_input_size
from .protocols import OVSSProtocol
from .simfeatup import load_simfeatup


@dataclass
class ProtocolRuntime:
    """What a protocol needs beside the user's model: the model the windows run through (a float16 copy where
    the protocol runs the official half model), the dtype of the logits, the input size windows are resized to
    (None: windows run at their own size) and the SimFeatUp upsampler (None: off)."""
    model: nn.Module
    dtype: torch.dtype
    model_size: int | None
    upsampler: nn.Module | None

    def window_options(self, protocol: OVSSProtocol) -> dict:
        """Keyword arguments of :func:`sliding_window_logits` for this protocol."""
        return dict(crop=protocol.crop, stride=protocol.stride, attn=protocol.attn, cls_lambda=protocol.cls_lambda,
                    cls_from=protocol.cls_from, model_size=self.model_size, upsampler=self.upsampler,
                    dtype=self.dtype)


def protocol_runtime(model: nn.Module, protocol: OVSSProtocol, amp: Amp = None) -> ProtocolRuntime:
    """Set up ``protocol`` for ``model`` (see :class:`ProtocolRuntime`)."""
    device = model_device(model)
    half = amp is None and model_dtype(model) != torch.bfloat16 and (
        protocol.half_model == "always" or (protocol.half_model == "cuda" and device.type == "cuda"))
    run_model = half_model(model) if half else model
    upsampler = None
    if protocol.simfeatup:
        upsampler = load_simfeatup(protocol.simfeatup, feat_dim=joint_dim(model)).to(device)
        if half and device.type == "cuda":
            upsampler = upsampler.half()
    return ProtocolRuntime(run_model, torch.float16 if half else torch.float32,
                           model_input_size(model) if protocol.window_to_model_size else None, upsampler)


def half_model(model: nn.Module) -> nn.Module:
    """A float16 copy of ``model`` as open_clip's ``create_model(precision='fp16')`` makes it (convolutions,
    linear and attention weights and the projections in float16, layer norms and embeddings in float32) --
    the models both official OVSS codes run. A model already in float16 is used as it is."""
    if model_dtype(model) == torch.float16:
        return model
    copy_ = copy.deepcopy(model)
    open_clip.model.convert_weights_to_lp(copy_, dtype=torch.float16)
    return copy_.eval()
