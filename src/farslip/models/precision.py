"""Mixed precision, one rule for training, evaluation and inference: which autocast an encoder runs under."""
from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import nn

#: What ``amp`` may be throughout the API (the CLI's ``--amp`` and ``optim.precision`` choices map onto these).
Amp = bool | str | None

#: Training's ``optim.precision`` names -> the autocast mode they mean.
TRAINING_PRECISION = {"fp32": "off", "amp": "fp16", "amp_fp16": "fp16", "fp16": "fp16", "amp_bf16": "bf16",
                      "bf16": "bf16"}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def autocast_for(target: nn.Module | torch.device, amp: Amp, *, training: bool = False
                 ) -> contextlib.AbstractContextManager:
    """The autocast an encoder runs under, on the target model's (or the given) device.

    * ``None`` / ``"auto"``: the official scripts' ``precision='amp'`` -- float16 autocast on CUDA for an fp32
      model; nothing on the CPU (the paper's evaluation protocol, the default of evaluation and inference);
    * ``True`` / ``"on"`` / ``"fp16"``: float16 autocast on CUDA (nothing on the CPU, where fp16 is slow and not
      the protocol); with ``training=True`` (``optim.precision: amp``) on the CPU too;
    * ``"bf16"``: bfloat16 autocast on the device, the CPU included. Not the paper's protocol: on a CPU with native
      bf16 (avx512_bf16 / AMX) OVSS runs about 3x faster and a few pixels in a thousand change class
      (docs/performance.md);
    * ``False`` / ``"off"`` / ``"fp32"``: none.

    Training maps ``optim.precision`` through :data:`TRAINING_PRECISION` and passes ``training=True``.
    """
    if amp not in (None, True, False, "auto", "on", "fp16", "bf16", "off", "fp32"):
        raise ValueError(f"amp must be auto, on, fp16, bf16 or off (or None/True/False), not {amp!r}")
    device = target if isinstance(target, torch.device) else model_device(target)
    if amp == "bf16":
        if device.type == "cpu" and cpu_has_native_bf16() is False:
            warnings.warn("amp='bf16' on a CPU without avx512_bf16/AMX: bf16 is emulated there and usually slower "
                          "than fp32", RuntimeWarning, stacklevel=2)
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16" and training:
        return torch.autocast(device.type, dtype=torch.float16)
    if amp in (False, "off", "fp32") or device.type != "cuda":
        return contextlib.nullcontext()
    if amp in (None, "auto"):
        fp32 = isinstance(target, torch.device) or model_dtype(target) == torch.float32
        return torch.autocast("cuda", dtype=torch.float16) if fp32 else contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool | None:
    """True when the CPU flags list bf16 arithmetic (avx512_bf16 or AMX); None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return None
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
