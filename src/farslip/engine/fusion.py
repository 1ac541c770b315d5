"""SAM 3 fused with a remote-sensing CLIP: three protocols of farslip's own (no published numbers -- measure them
with ``farslip eval compare``; docs/protocols.md says what was measured on what).

SAM 3 finds and delineates things; a CLIP trained on remote-sensing regions (FarSLIP stage 2 aligns a crop's
ordinary image embedding with "a satellite image of {category}") recognises them. Each fusion works inside SAM 3's
windows, so tiling, window averaging, synonyms and the background threshold stay SegEarth-OV3's, and each has a
weight ``w`` (``clip_weight``) with ``w = 0`` giving SAM 3's numbers exactly:

* ``clip-rescore`` (a): every object SAM 3 keeps is cropped from the window at its box and classified by the CLIP
  (its CLS embedding against "a satellite image of {name}" for every name, softmax over the names at 100 x cosine);
  the object's weight in its prompt's map becomes ``(1 - w) * object score + w * p_clip(prompt's name)``. Which
  objects are kept stays SAM 3's decision.
* ``clip-fuse`` (b): the CLIP's dense probabilities over the names (its OVSS protocol's windows inside the SAM 3
  window: last-block surgery, CLS-bias, softmax at 50 x cosine) are blended in where SAM 3 doubts the prompt is
  there: ``(1 - l) * SAM 3 + l * CLIP`` with ``l = w * (1 - presence)`` per prompt and window -- CLIP takes over
  land-cover "stuff" that SAM 3's presence head rejects.
* ``clip-presence`` (c): the prompt's presence comes partly from the CLIP: the window is cut into the CLIP
  protocol's windows, each classified by its CLS embedding (scene prompts, softmax over the names), and a name's
  CLIP presence is its best window's probability relative to that window's top one; the presence that multiplies
  the prompt's map becomes ``(1 - w) * sigmoid(presence) + w * CLIP presence``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..models.precision import model_device
from .images import model_input_size, normaliser
from .prompts import OVSS_TEMPLATES, SCENE_TEMPLATES, TextEmbeddingCache, name_embeddings
from .protocols import Sam3Protocol, get_protocol
from .runtime import protocol_runtime
from .sam3 import FusionRule, Grounding, Sam3Runtime, bf16_autocast, object_scores, window_maps
from .scores import class_scores
from .windows import sliding_window_logits, window_boxes

#: FarSLIP stage 2's region text (spec section 5): what the CLIP's region embedding was aligned with.
REGION_TEMPLATES: tuple[str, ...] = ("a satellite image of {c}",)

#: Region crops per CLIP encoder call.
CLIP_BATCH = 64


@dataclass
class ClipSide:
    """The CLIP of a fusion, set up once per run: its model, tokenizer, its OVSS protocol's runtime and the name
    embeddings each fusion reads."""
    model: object
    tokenizer: object
    protocol: object                    # the OVSSProtocol of ``clip_protocol``
    runtime: object                     # its ProtocolRuntime
    dense_text: torch.Tensor | None = None      # [Q, D] 80-template embeddings (clip-fuse)
    region_text: torch.Tensor | None = None     # [Q, D] stage 2's region prompt (clip-rescore)
    scene_text: torch.Tensor | None = None      # [Q, D] scene prompts (clip-presence)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)


def clip_side(model, tokenizer, names: Sequence[str], protocol: Sam3Protocol, *, amp=None,
              cache: TextEmbeddingCache | None = None) -> ClipSide:
    """The CLIP part of ``protocol``'s fusion for ``names``."""
    clip_protocol = get_protocol(protocol.clip_protocol)
    runtime = protocol_runtime(model, clip_protocol, amp)
    side = ClipSide(model, tokenizer, clip_protocol, runtime)
    with torch.no_grad():
        if protocol.fusion == "clip-fuse":
            side.dense_text = name_embeddings(runtime.model, tokenizer, names, OVSS_TEMPLATES, cache=cache)
        elif protocol.fusion == "clip-rescore":
            side.region_text = name_embeddings(model, tokenizer, names, REGION_TEMPLATES, cache=cache)
        else:
            side.scene_text = name_embeddings(model, tokenizer, names, SCENE_TEMPLATES, cache=cache)
    return side


@torch.no_grad()
def clip_probabilities(side: ClipSide, crops: Sequence[torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """``[n, Q]`` softmax over the names of 100 x cosine between each uint8 crop's image embedding (the crop resized
    bilinearly to the CLIP's input size) and ``text``."""
    size = model_input_size(side.model)
    norm = normaliser(side.model)
    out = []
    for start in range(0, len(crops), CLIP_BATCH):
        batch = torch.stack([F.interpolate(norm(c.to(side.device))[None], size=(size, size), mode="bilinear",
                                           align_corners=False)[0] for c in crops[start:start + CLIP_BATCH]])
        feats = F.normalize(side.model.encode_image(batch).float(), dim=-1)
        out.append((100.0 * feats @ text.to(feats.device).t()).softmax(dim=-1))
    return torch.cat(out) if out else torch.empty(0, text.shape[0], device=side.device)


def box_crops(window: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
    """The parts of a uint8 ``[3, h, w]`` window under ``boxes`` ``[n, 4]`` (cx, cy, w, h in [0, 1]), at least one
    pixel each."""
    h, w = window.shape[-2:]
    crops = []
    for cx, cy, bw, bh in boxes.float().tolist():
        x0 = min(max(int((cx - bw / 2) * w), 0), w - 1)
        y0 = min(max(int((cy - bh / 2) * h), 0), h - 1)
        x1 = max(min(int(round((cx + bw / 2) * w)), w), x0 + 1)
        y1 = max(min(int(round((cy + bh / 2) * h)), h), y0 + 1)
        crops.append(window[:, y0:y1, x0:x1])
    return crops


@dataclass
class FusedRuntime:
    """A :class:`~farslip.engine.sam3.Sam3Runtime` with a CLIP fused in (see the module's description); its
    :meth:`maps` replaces the SAM 3 runtime's."""
    sam3: Sam3Runtime
    clip: ClipSide
    fusion: str
    weight: float

    @property
    def prompts(self):
        return self.sam3.prompts

    @property
    def device(self):
        return self.sam3.device

    def image_maps(self, image: torch.Tensor, boxes) -> torch.Tensor:
        return self.sam3.image_maps(image, boxes, window_maps_fn=self.maps)

    @torch.no_grad()
    def maps(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        rt = self.sam3
        out = [torch.empty((len(rt.prompts),) + tuple(w.shape[-2:]), device=rt.device) for w in windows]
        extra = {}
        for i, window, p, g in rt.groundings(windows):
            size = tuple(window.shape[-2:])
            q = slice(p, p + len(g.presence))
            if self.fusion == "clip-rescore":
                with bf16_autocast(rt.device, rt.autocast):
                    out[i][q] = window_maps(g, size, rt.rule, self._rescored(window, g, p, rt.rule))
            elif self.fusion == "clip-fuse":
                with bf16_autocast(rt.device, rt.autocast):
                    sam = window_maps(g, size, rt.rule)
                if i not in extra:
                    extra[i] = self._dense(window)
                mix = (self.weight * (1 - g.presence.float().sigmoid())).view(-1, 1, 1)
                out[i][q] = (1 - mix) * sam + mix * extra[i][q]
            else:
                if i not in extra:
                    extra[i] = self._presence(window)
                out[i][q] = self._gated(g, size, rt.rule, extra[i][q])
        return out

    def _rescored(self, window: torch.Tensor, g: Grounding, first: int, rule: FusionRule) -> torch.Tensor | None:
        """``[q, N]`` object weights: SAM 3's object score blended with the CLIP's probability of the prompt's own
        name for each kept object's crop (None: SAM 3's own, when the weight is 0 or nothing is kept)."""
        scores = object_scores(g).float()
        keep = scores > rule.confidence
        if self.weight == 0 or not bool(keep.any()):
            return None
        rows, cols = keep.nonzero(as_tuple=True)
        probs = clip_probabilities(self.clip, box_crops(window, g.boxes[rows, cols]), self.clip.region_text)
        own = probs[torch.arange(len(rows)), (rows + first).to(probs.device)].to(scores.device)
        out = scores.clone()
        out[rows, cols] = (1 - self.weight) * scores[rows, cols] + self.weight * own
        return out

    def _dense(self, window: torch.Tensor) -> torch.Tensor:
        """``[Q, h, w]`` the CLIP protocol's probabilities over the names inside the window (its own windows at the
        window's resolution)."""
        side = self.clip
        x = normaliser(side.model)(window.to(side.device))
        h, w = x.shape[-2:]
        options = side.runtime.window_options(side.protocol)
        crop, stride = options.pop("crop"), options.pop("stride")
        logits = sliding_window_logits(side.runtime.model, [x], side.dense_text,
                                       boxes=[window_boxes(h, w, crop, stride)], **options)[0]
        n = logits.shape[0]
        return class_scores(logits.float(), torch.arange(n), n, logit_scale=side.protocol.logit_scale)

    def _presence(self, window: torch.Tensor) -> torch.Tensor:
        """``[Q]`` each name's CLIP presence in the window: over the CLIP protocol's windows, the best ratio of its
        probability to that window's top probability."""
        h, w = window.shape[-2:]
        crops = [window[:, y1:y2, x1:x2] for y1, y2, x1, x2 in window_boxes(h, w, self.clip.protocol.crop,
                                                                             self.clip.protocol.stride)]
        probs = clip_probabilities(self.clip, crops, self.clip.scene_text)
        return (probs / probs.amax(dim=1, keepdim=True)).amax(dim=0).to(self.device)

    def _gated(self, g: Grounding, size, rule: FusionRule, clip_presence: torch.Tensor) -> torch.Tensor:
        """The prompts' maps with the presence blended from SAM 3's and the CLIP's."""
        rt = self.sam3
        with bf16_autocast(rt.device, rt.autocast):
            maps = window_maps(g, size, FusionRule(rule.confidence, rule.instances, rule.semantic, presence=False))
            sam_presence = g.presence.sigmoid()
        if not rule.presence:
            return maps
        if self.weight == 0:
            return torch.stack([m * p for m, p in zip(maps, sam_presence)])  # exactly SAM 3's arithmetic
        presence = (1 - self.weight) * sam_presence.float() + self.weight * clip_presence.float()
        return maps * presence.view(-1, 1, 1)


def fused_runtime(sam3: Sam3Runtime, clip: ClipSide, protocol: Sam3Protocol) -> FusedRuntime:
    return FusedRuntime(sam3, clip, protocol.fusion, float(protocol.clip_weight))
