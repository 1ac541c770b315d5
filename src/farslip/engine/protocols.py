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

A third runs SAM 3 instead of a CLIP (:class:`Sam3Protocol`, ``engine/sam3.py``):

* ``segearth-ov3`` -- earth-insights/SegEarth-OV-3 ``segearthov3_segmentor.py`` + ``configs/cfg_*.py`` at commit
  87e5cc1: per dataset its windows, object-confidence threshold, ``prob_thd`` and background index
  (:data:`SEGEARTH_OV3_DATASETS`), instance masks x object scores max-fused with the semantic head, x presence,
  bf16 autocast on CUDA;

and three fuse it with an RS CLIP (``engine/fusion.py``; farslip's own, no published numbers):
``sam3-clip-rescore``, ``sam3-clip-fuse``, ``sam3-clip-presence``.

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

PROTOCOLS: dict[str, "OVSSProtocol | Sam3Protocol"] = {p.name: p for p in [
    OVSSProtocol("farslip", cls_lambda=0.0, threshold=0.0, window_to_model_size=True, source=_RS_OVSS),
    OVSSProtocol("segearth", cls_lambda=-0.3, threshold=None, window_to_model_size=False, source=_SEGEARTH),
]}

#: What ``farslip eval ovss|all`` and ``farslip.eval.ovss`` use unless told: the paper's table.
DEFAULT_PROTOCOL = "farslip"


def get_protocol(protocol: "str | OVSSProtocol | Sam3Protocol | None" = None,
                 overrides: Mapping[str, Any] | None = None) -> "OVSSProtocol | Sam3Protocol":
    """A registered protocol by name (case-insensitive; None: :data:`DEFAULT_PROTOCOL`) or a given one, with
    ``overrides`` applied (None values ignored)."""
    if protocol is None:
        protocol = DEFAULT_PROTOCOL
    if isinstance(protocol, str):
        found = PROTOCOLS.get(protocol.lower())
        if found is None:
            raise ValueError(f"unknown OVSS protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        protocol = found
    if not isinstance(protocol, (OVSSProtocol, Sam3Protocol)):
        raise TypeError(f"protocol must be a name, an OVSSProtocol or a Sam3Protocol, not {type(protocol).__name__}")
    return protocol.replace(**(overrides or {}))


# ----------------------------------------------------------------------------------------------------------------
# SAM 3: SegEarth-OV3's protocol, and the fusions with an RS CLIP

@dataclass(frozen=True)
class Sam3DatasetRule:
    """One dataset's model settings in SegEarth-OV3's ``configs/cfg_<dataset>.py``.

    ``crop``/``stride``: ``slide_crop``/``slide_stride`` (None: the whole image is one window); ``confidence``:
    ``confidence_threshold``; ``threshold``/``background_index``: ``prob_thd``/``bg_idx``; ``class_file``: the
    shipped class-name file of its ``classname_path`` (``cls_ov3_*`` where it differs from SegEarth-OV's)."""
    crop: int | None
    stride: int | None
    confidence: float
    threshold: float
    background_index: int
    class_file: str


_OV3_COMMIT = "87e5cc18c8bc9c0b4713b975587281ac1c97c79a"
_SEGEARTH_OV3 = (f"github.com/earth-insights/SegEarth-OV-3 at {_OV3_COMMIT[:7]}: segearthov3_segmentor.py, "
                 "sam3/model/sam3_image_processor.py, configs/cfg_*.py")

#: SegEarth-OV3's settings of the eight benchmarks (configs/cfg_<x>.py at :data:`_OV3_COMMIT`), by the names of
#: ``farslip.eval.registry.OVSS``.
SEGEARTH_OV3_DATASETS: dict[str, Sam3DatasetRule] = {
    "OpenEarthMap": Sam3DatasetRule(512, 512, 0.1, 0.1, 0, "openearthmap"),
    "LoveDA": Sam3DatasetRule(None, None, 0.5, 0.5, 0, "ov3_loveda"),
    "iSAID": Sam3DatasetRule(None, None, 0.4, 0.5, 0, "isaid"),
    "Potsdam": Sam3DatasetRule(None, None, 0.2, 0.1, 5, "ov3_potsdam"),
    "Vaihingen": Sam3DatasetRule(None, None, 0.4, 0.1, 5, "ov3_vaihingen"),
    "UAVid": Sam3DatasetRule(None, None, 0.3, 0.3, 0, "uavid"),
    "UDD5": Sam3DatasetRule(None, None, 0.5, 0.1, 4, "udd5"),
    "VDD": Sam3DatasetRule(None, None, 0.5, 0.3, 0, "vdd"),
}

#: ``autocast`` choices of a SAM 3 protocol: bfloat16 autocast on CUDA only (SegEarth-OV3 wraps every window in
#: ``torch.autocast("cuda", dtype=torch.bfloat16)``), on any device, or never (float32).
SAM3_AUTOCAST_CHOICES = ("cuda", "always", "never")

#: The fusions of SAM 3 with an RS CLIP (``engine/fusion.py``).
FUSIONS = ("clip-rescore", "clip-fuse", "clip-presence")

#: SegEarth-OV3's segmentor defaults, for a dataset its configs do not describe (a user's own data, a raster).
SAM3_DEFAULT_CONFIDENCE = 0.5
#: Windows on a raster when the protocol names none (rasters are never one window): OpenEarthMap's, the one RS
#: config of SegEarth-OV3 that slides.
SAM3_RASTER_WINDOW = 512


@dataclass(frozen=True)
class Sam3Protocol:
    """The settings of a SAM 3 protocol (SegEarth-OV3's, or a fusion with an RS CLIP).

    Attributes:
        name: registry name.
        crop, stride: windows over the image at its own resolution (None: each dataset's, see
            :data:`SEGEARTH_OV3_DATASETS`; a dataset without them is one window; rasters: :data:`SAM3_RASTER_WINDOW`).
        confidence: objects whose score ``sigmoid(logit) * presence`` does not exceed it are dropped (None: the
            dataset's, else 0.5).
        threshold, background_index: ``prob_thd`` / ``bg_idx`` (None: the dataset's).
        instances, semantic, presence: ``use_transformer_decoder``, ``use_sem_seg``, ``use_presence_score``.
        autocast: bfloat16 autocast ``"cuda"`` (only there: SegEarth-OV3), ``"always"`` or ``"never"`` (float32).
        fusion: None (SAM 3 alone) or one of :data:`FUSIONS`.
        clip_weight: weight of the CLIP in the fusion (0: the fusion gives SAM 3's numbers exactly).
        clip_protocol: the CLIP protocol whose dense settings the fusions use (attention, CLS-bias, windows).
        source: where the defaults come from.
    """
    name: str
    crop: int | None = None
    stride: int | None = None
    confidence: float | None = None
    threshold: float | None = None
    background_index: int | None = None
    instances: bool = True
    semantic: bool = True
    presence: bool = True
    autocast: str = "cuda"
    fusion: str | None = None
    clip_weight: float = 0.5
    clip_protocol: str = "segearth"
    source: str = ""

    kind = "sam3"

    def __post_init__(self):
        if self.autocast not in SAM3_AUTOCAST_CHOICES:
            raise ValueError(f"autocast must be one of {SAM3_AUTOCAST_CHOICES}, got {self.autocast!r}")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS} or None, got {self.fusion!r}")
        if (self.crop is not None and self.crop <= 0) or (self.stride is not None and self.stride <= 0):
            raise ValueError(f"crop and stride must be positive, got {self.crop} and {self.stride}")
        if not 0 <= self.clip_weight <= 1:
            raise ValueError(f"clip_weight must be in [0, 1], got {self.clip_weight}")

    @property
    def needs_clip(self) -> bool:
        return self.fusion is not None

    def replace(self, **overrides: Any) -> "Sam3Protocol":
        """A copy with ``overrides`` applied (None: unchanged; ``"dataset"`` resets threshold, background index,
        confidence and windows to each dataset's). A CLIP-only setting (``attn``, ``cls_lambda``, ...) is refused
        with a line saying so."""
        clip_only = sorted(k for k, v in overrides.items() if v is not None and k in CLIP_ONLY_SETTINGS)
        if clip_only:
            raise ValueError(f"{', '.join(clip_only)}: CLIP-only setting(s); protocol {self.name} runs SAM 3 (its "
                             f"settings: {', '.join(SAM3_SETTINGS)})")
        unknown = sorted(set(overrides) - set(SAM3_SETTINGS) - set(CLIP_ONLY_SETTINGS))
        if unknown:
            raise ValueError(f"unknown SAM 3 protocol setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(SAM3_SETTINGS)}")
        changes = {k: (None if v == "dataset" else v) for k, v in overrides.items()
                   if v is not None and k in SAM3_SETTINGS}
        return dataclasses.replace(self, **changes) if changes else self

    def dataset_rule(self, dataset) -> Sam3DatasetRule:
        """The settings this protocol applies on ``dataset`` (an ``OVSSDataset``): SegEarth-OV3's config for the
        eight benchmarks, the dataset's own threshold and background index otherwise; given values win."""
        base = SEGEARTH_OV3_DATASETS.get(getattr(dataset, "name", ""))
        if base is None:
            base = Sam3DatasetRule(None, None, SAM3_DEFAULT_CONFIDENCE, float(dataset.prob_threshold),
                                   int(dataset.background_index), "")
        crop = self.crop if self.crop is not None else base.crop
        stride = self.stride if self.stride is not None else (base.stride if self.crop is None else None)
        return Sam3DatasetRule(crop, stride or crop,
                               base.confidence if self.confidence is None else float(self.confidence),
                               base.threshold if self.threshold is None else float(self.threshold),
                               base.background_index if self.background_index is None else int(self.background_index),
                               base.class_file)

    def raster_rule(self) -> Sam3DatasetRule:
        """The settings on a raster (``segment``/``locate``): the protocol's windows, else
        :data:`SAM3_RASTER_WINDOW`; the segmentor's default confidence unless given."""
        crop = self.crop or SAM3_RASTER_WINDOW
        return Sam3DatasetRule(crop, self.stride or crop,
                               SAM3_DEFAULT_CONFIDENCE if self.confidence is None else float(self.confidence),
                               0.0 if self.threshold is None else float(self.threshold),
                               0 if self.background_index is None else int(self.background_index), "")

    def settings(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["kind"] = self.kind
        base = PROTOCOLS.get(self.name)
        out["overridden"] = sorted(k for k in SAM3_SETTINGS if base is not None and getattr(base, k) != out[k])
        return out

    def describe(self, dataset=None) -> str:
        if dataset is not None:
            rule = self.dataset_rule(dataset)
            windows = f"windows {rule.crop}/{rule.stride}" if rule.crop else "whole image"
            parts = [windows, f"confidence {rule.confidence:g}",
                     f"threshold {rule.threshold:g} -> class {rule.background_index}" if rule.threshold > 0
                     else "no threshold"]
        else:
            parts = [f"windows {self.crop}/{self.stride or self.crop}" if self.crop else "each dataset's windows",
                     "each dataset's confidence" if self.confidence is None else f"confidence {self.confidence:g}",
                     "each dataset's threshold" if self.threshold is None else f"threshold {self.threshold:g}"]
        heads = "+".join(h for h, on in (("instances", self.instances), ("semantic", self.semantic)) if on)
        parts += [f"SAM 3 {heads or 'no heads'}" + (" x presence" if self.presence else ""),
                  {"cuda": "bf16 autocast on CUDA", "always": "bf16 autocast", "never": "fp32"}[self.autocast]]
        if self.fusion:
            parts.append(f"fusion {self.fusion} (CLIP weight {self.clip_weight:g}, CLIP protocol {self.clip_protocol})")
        changed = self.settings()["overridden"]
        if changed:
            parts.append("overridden: " + ", ".join(changed))
        return f"protocol {self.name}, " + ", ".join(parts)


#: The settings a caller may override on a SAM 3 protocol.
SAM3_SETTINGS = tuple(f.name for f in dataclasses.fields(Sam3Protocol) if f.name not in ("name", "source"))
#: OVSS settings that only mean something for a CLIP (refused with a SAM 3 protocol).
CLIP_ONLY_SETTINGS = tuple(k for k in PROTOCOL_SETTINGS if k not in SAM3_SETTINGS)

_FUSION = "farslip engine/fusion.py (no published numbers: measure with farslip eval compare)"

PROTOCOLS.update({p.name: p for p in [
    Sam3Protocol("segearth-ov3", source=_SEGEARTH_OV3),
    Sam3Protocol("sam3-clip-rescore", fusion="clip-rescore", source=_SEGEARTH_OV3 + "; " + _FUSION),
    Sam3Protocol("sam3-clip-fuse", fusion="clip-fuse", source=_SEGEARTH_OV3 + "; " + _FUSION),
    Sam3Protocol("sam3-clip-presence", fusion="clip-presence", source=_SEGEARTH_OV3 + "; " + _FUSION),
]})


def is_sam3(protocol) -> bool:
    """Whether a protocol (name or object) runs SAM 3."""
    if isinstance(protocol, str):
        protocol = PROTOCOLS.get(protocol.lower())
    return isinstance(protocol, Sam3Protocol)
