"""OVSS protocols as data: every setting that changes an open-vocabulary segmentation number, by name.

Two official protocols exist and give different numbers on the same weights (spec section 7):

* ``farslip`` -- NJU-LHRS/RS-OVSS ``eval_customized.py`` + ``customized_segmentor.py``, which made the FarSLIP
  paper's OVSS table. ``eval_customized.py`` replaces each dataset config's model settings with
  ``CustomizedSegmentation``'s defaults: no CLS-bias (``cls_token_lambda=0``), no background threshold
  (``prob_thd=0.0``, so the configs' thresholds and background indices are not used), and every window whose
  padded size is not the model's input size is resized to it and its logits resized back (``forward_feature``).
* ``segearth`` -- likyoo/SegEarth-OV ``segearth_segmentor.py`` + ``configs/``: CLS-bias ``-0.3`` (base_config.py),
  each dataset's ``prob_thd`` and ``bg_idx`` (configs/cfg_*.py), windows fed at their own size (positional
  embedding interpolated); SimFeatUp is on in its base config and optional here (``simfeatup=<weights file>``).

Common to both: images read and resized by mmcv on OpenCV to fit 448 x 448 keeping the ratio, 224 windows with
stride 112, each padded to a patch multiple, SegEarth last block with the residual ignored, logits
``50 x cosine``, softmax over all names, a class scores by its best synonym, argmax; a half-precision model on
CUDA (``create_model(..., precision='fp16')`` and ``inputs.half()`` in both).

Any value can be overridden (:meth:`OVSSProtocol.replace`, the CLI's ``--threshold``, ``--cls-lambda``, ...);
the settings used are printed beside every number and written into results.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..models import ATTENTION_VARIANTS


HALF_MODEL_CHOICES = ("cuda", "always", "never")


@dataclass(frozen=True)
class OVSSProtocol:
    """The settings of one OVSS protocol.

    Attributes:
        name: registry name (an overridden protocol keeps it, and lists what changed in :meth:`settings`).
        scale: images resized (OpenCV bilinear) to fit ``scale x scale`` keeping the ratio; None: no resize.
        crop, stride: sliding window size and step on the resized image.
        attn: last-block attention variant (``segearth``, ``sclip``, ``clearclip``, ``maskclip``, ``vanilla``).
        cls_lambda: weight of the CLS-embedding logits added to every patch; 0 turns the CLS-bias off.
        cls_from: CLS embedding for the bias: ``surgery`` (the modified block's CLS row, both official codes)
            or ``ordinary``.
        logit_scale: temperature of the softmax over names.
        threshold: pixels whose best class probability is under it get the background class; None: each
            dataset's own (SegEarth-OV's configs).
        background_index: the class those pixels get; None: each dataset's own.
        window_to_model_size: a window whose padded size is not the model's input size is resized (bilinear) to
            it and its logits resized back to the window (RS-OVSS ``forward_feature``); otherwise it is encoded
            at its own size with an interpolated positional embedding (SegEarth-OV).
        simfeatup: path of SegEarth-OV's SimFeatUp weights: dense features upsampled x16 by it before the
            cosine; None: bilinear upsampling of the logits.
        half_model: ``"cuda"``: on CUDA, a float16 copy of the model (open_clip ``convert_weights_to_lp``, as
            ``create_model(precision='fp16')``) with float16 windows, logits and window sums (``inputs.half()`` in
            both official codes); ``"always"``: that on any device (slow on a CPU; for checks); ``"never"``: the
            model runs as given. An explicit ``amp`` choice of the caller also runs the model as given.
        source: the official file(s) the defaults come from.
    """
    name: str
    scale: int | None = 448
    crop: int = 224
    stride: int = 112
    attn: str = "segearth"
    cls_lambda: float = 0.0
    cls_from: str = "surgery"
    logit_scale: float = 50.0
    threshold: float | None = 0.0
    background_index: int | None = None
    window_to_model_size: bool = True
    simfeatup: str | None = None
    half_model: str = "cuda"
    source: str = ""

    def __post_init__(self):
        if self.attn not in ATTENTION_VARIANTS:
            raise ValueError(f"attn must be one of {ATTENTION_VARIANTS}, got {self.attn!r}")
        if self.cls_from not in ("surgery", "ordinary"):
            raise ValueError(f"cls_from must be 'surgery' or 'ordinary', got {self.cls_from!r}")
        if self.crop <= 0 or self.stride <= 0:
            raise ValueError(f"crop and stride must be positive, got {self.crop} and {self.stride}")
        if self.half_model not in HALF_MODEL_CHOICES:
            raise ValueError(f"half_model must be one of {HALF_MODEL_CHOICES}, got {self.half_model!r}")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"scale must be positive or None, got {self.scale}")

    def replace(self, **overrides: Any) -> "OVSSProtocol":
        """A copy with ``overrides`` applied; a value of None leaves that setting as it is (so CLI flags that
        were not given pass straight through). ``threshold``/``background_index`` can be reset to the dataset's
        own with the string ``"dataset"``."""
        known = set(PROTOCOL_SETTINGS)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown OVSS protocol setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        for key in ("threshold", "background_index"):
            if changes.get(key) == "dataset":
                changes[key] = None
        if "scale" in changes and not changes["scale"]:
            changes["scale"] = None  # 0 / False: no resize
        return dataclasses.replace(self, **changes) if changes else self

    def dataset_rule(self, dataset) -> tuple[float, int]:
        """``(threshold, background index)`` this protocol applies on ``dataset`` (an ``OVSSDataset``)."""
        threshold = dataset.prob_threshold if self.threshold is None else self.threshold
        background = dataset.background_index if self.background_index is None else self.background_index
        return float(threshold), int(background)

    def settings(self) -> dict[str, Any]:
        """Every value, plus ``overridden``: the ones that differ from the registered protocol of this name."""
        out = dataclasses.asdict(self)
        base = PROTOCOLS.get(self.name)
        out["overridden"] = sorted(k for k, v in out.items()
                                   if base is not None and k not in ("name", "source") and getattr(base, k) != v)
        return out

    def describe(self, dataset=None) -> str:
        """One line for a report: the name and the values that decide the numbers."""
        if dataset is not None:
            thr, bg = self.dataset_rule(dataset)
            rule = f"threshold {thr:g} -> class {bg}" if thr > 0 else "no threshold"
        elif self.threshold is None:
            rule = "each dataset's threshold"
        else:
            rule = f"threshold {self.threshold:g}" if self.threshold > 0 else "no threshold"
        parts = [f"protocol {self.name}", f"fit {self.scale or 'none'}", f"windows {self.crop}/{self.stride}",
                 f"{self.attn} last block", f"lambda {self.cls_lambda:g}", rule, f"{self.logit_scale:g} x cosine"]
        if self.window_to_model_size:
            parts.append("windows resized to the model's input")
        if self.simfeatup:
            parts.append("SimFeatUp")
        changed = self.settings()["overridden"]
        if changed:
            parts.append("overridden: " + ", ".join(changed))
        return ", ".join(parts)


#: The settings a caller may override (every field but the name and the source).
PROTOCOL_SETTINGS = tuple(f.name for f in dataclasses.fields(OVSSProtocol) if f.name not in ("name", "source"))

_RS_OVSS = ("github.com/NJU-LHRS/RS-OVSS eval_customized.py (model settings replaced by CustomizedSegmentation's "
            "defaults in customized_segmentor.py)")
_SEGEARTH = "github.com/likyoo/SegEarth-OV segearth_segmentor.py, configs/base_config.py, configs/cfg_*.py"

PROTOCOLS: dict[str, OVSSProtocol] = {p.name: p for p in [
    OVSSProtocol("farslip", cls_lambda=0.0, threshold=0.0, window_to_model_size=True, source=_RS_OVSS),
    OVSSProtocol("segearth", cls_lambda=-0.3, threshold=None, window_to_model_size=False, source=_SEGEARTH),
]}

#: What ``farslip eval ovss|all`` and ``farslip.eval.ovss`` use unless told: the paper's table.
DEFAULT_PROTOCOL = "farslip"


def get_protocol(protocol: "str | OVSSProtocol | None" = None,
                 overrides: Mapping[str, Any] | None = None) -> OVSSProtocol:
    """A registered protocol by name (case-insensitive; None: :data:`DEFAULT_PROTOCOL`) or a given one, with
    ``overrides`` applied (None values ignored)."""
    if protocol is None:
        protocol = DEFAULT_PROTOCOL
    if isinstance(protocol, str):
        found = PROTOCOLS.get(protocol.lower())
        if found is None:
            raise ValueError(f"unknown OVSS protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        protocol = found
    if not isinstance(protocol, OVSSProtocol):
        raise TypeError(f"protocol must be a name or an OVSSProtocol, not {type(protocol).__name__}")
    return protocol.replace(**(overrides or {}))
