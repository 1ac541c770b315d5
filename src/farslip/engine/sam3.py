"""SAM 3 in the dense engine: what SegEarth-OV3's segmentor computes for each window, batched.

github.com/earth-insights/SegEarth-OV-3 ``segearthov3_segmentor.py`` (``_inference_single_view``) with its
``sam3/model/sam3_image_processor.py``, per window and query word:

1. the window (a PIL crop of the original image) -> uint8 -> resized to 1008 x 1008 (torchvision v2, bilinear,
   antialiased) -> [0, 1] -> normalised with mean = std = 0.5; the image encoder runs once per window;
2. the text prompt "<query word>" -> SAM 3's text encoder (32 positions) -> the prompt is the text tokens plus the
   geometry encoder's CLS token (no box is given; ``Sam3Image._encode_prompt``);
3. DETR encoder and decoder -> per object query a logit, a box, a mask; the presence token's logit;
4. the processor keeps the objects whose ``sigmoid(logit) * sigmoid(presence)`` exceeds ``confidence_threshold``
   (that product is their "object score"), and sigmoids the masks and the semantic head's map, all bilinearly
   resized to the window;
5. the segmentor: the query's map starts at 0, takes the element-wise max with each kept object's mask times its
   object score (``use_transformer_decoder``), then with the semantic map (``use_sem_seg``), then is multiplied by
   ``sigmoid(presence)`` (``use_presence_score``).

Here the class prompts of a window go through the decoder together (one batch; the image features are shared,
not copied), the windows' image encoder calls are batched, and the text encoder runs once per run instead of once
per window and prompt -- the numbers are those of the loop (tests/support/reference_segearth_ov3.py is a
transcription of it, checked against this on tiny random SAM 3 models). Under ``autocast`` the whole window
computation runs in bfloat16 autocast, as the segmentor's ``torch.autocast("cuda", dtype=torch.bfloat16)``.

The text-only path of transformers' ``Sam3Model.forward`` leaves out the geometry CLS token that the official
model appends to every prompt (it only runs the geometry encoder for boxes); :func:`ground` adds it, which is what
makes these outputs the official model's (tests/models/test_sam3_official.py, against the official code's outputs).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from ..core.errors import UsageError
from ..models.precision import model_device
from ..models.sam3 import SAM3_CONTEXT, prompt_length


@dataclass
class Sam3Prompts:
    """The class prompts of a run, encoded once: token ids ``[Q, 32]``, their mask (True = a token) and the text
    features the DETR layers read ``[Q, 32, D]``."""
    names: list[str]
    ids: torch.Tensor
    mask: torch.Tensor
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.names)

    def take(self, start: int, stop: int) -> "Sam3Prompts":
        return Sam3Prompts(self.names[start:stop], self.ids[start:stop], self.mask[start:stop],
                           self.features[start:stop])


def check_prompt_lengths(tokenizer, names: Sequence[str]) -> None:
    """Refuse a class name longer than SAM 3's text encoder takes (the official tokenizer would cut it silently)."""
    if not names:
        raise UsageError("no class names given: SAM 3 needs at least one text prompt")
    for name in names:
        n = prompt_length(tokenizer, name)
        if n > SAM3_CONTEXT:
            raise UsageError(f"class name {name[:60]!r}{'...' if len(name) > 60 else ''} is {n} tokens long; SAM 3's "
                             f"text encoder takes {SAM3_CONTEXT} (with its start and end tokens): shorten it")


@torch.no_grad()
def encode_prompts(model, tokenizer, names: Sequence[str], *, autocast: bool = False) -> Sam3Prompts:
    """Every name through SAM 3's text encoder and its projection to the DETR width (``backbone.forward_text``)."""
    names = list(names)
    check_prompt_lengths(tokenizer, names)
    device = model_device(model)
    ids = tokenizer(names).to(device)
    mask = ids != 0
    with bf16_autocast(device, autocast):
        features = model.get_text_features(input_ids=ids, attention_mask=mask.long()).pooler_output
    return Sam3Prompts(names, ids, mask, features)


def bf16_autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when enabled (SegEarth-OV3 runs every window under it on CUDA)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def sam3_pixels(windows: Sequence[torch.Tensor], resolution: int) -> torch.Tensor:
    """``[B, 3, R, R]`` SAM 3 inputs from uint8 ``[3, h, w]`` windows: ``Sam3Processor``'s transform (uint8 ->
    resize to ``R x R``, bilinear with antialiasing -> float in [0, 1] -> (x - 0.5) / 0.5)."""
    from torchvision.transforms import v2

    transform = v2.Compose([v2.ToDtype(torch.uint8, scale=True), v2.Resize(size=(resolution, resolution)),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    return torch.stack([transform(w) for w in windows])


@dataclass
class Grounding:
    """SAM 3's outputs for ``Q`` prompts against one window: per object query a logit ``[Q, N]``, a box
    ``[Q, N, 4]`` (cx, cy, w, h in [0, 1]) and a mask ``[Q, N, h, w]`` (logits); the presence logit ``[Q]`` and the
    semantic head's map ``[Q, 1, h, w]`` (logits), both at the mask decoder's resolution."""
    logits: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    presence: torch.Tensor
    semantic: torch.Tensor


def _expanded(vision, n: int):
    """The window's image features seen as a batch of ``n`` (views: nothing is copied)."""
    fpn = tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_hidden_states)
    pos = tuple(t.expand(n, *t.shape[1:]) for t in vision.fpn_position_encoding)
    return fpn, pos


def geometry_cls(model, fpn, pos, q: int):
    """The geometry encoder's output for a prompt without boxes: its CLS token, which the official model appends to
    every text prompt. (Under bf16 autocast on a CPU, torchvision's ``roi_align`` -- called even for no box --
    cannot run: there the encoder runs in float32; the official code autocasts on CUDA only.)"""
    device = fpn[-1].device
    no_box = dict(box_embeddings=torch.zeros(q, 0, 4, device=device), box_mask=torch.zeros(q, 0, dtype=torch.bool,
                  device=device), box_labels=torch.zeros(q, 0, dtype=torch.long, device=device))
    if device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return model.geometry_encoder(img_feats=tuple(f.float() for f in fpn),
                                          img_pos_embeds=tuple(p.float() for p in pos), **no_box)
    return model.geometry_encoder(img_feats=fpn, img_pos_embeds=pos, **no_box)


@torch.no_grad()
def ground(model, vision, prompts: Sam3Prompts) -> Grounding:
    """All ``prompts`` against one window's image features (``vision``: ``get_vision_features`` of one window):
    ``Sam3Image.forward_grounding`` of the official model, batched over the prompts."""
    from transformers.models.sam3.modeling_sam3 import inverse_sigmoid

    q = len(prompts)
    fpn, pos = _expanded(vision, q)
    fpn, pos = fpn[:-1], pos[:-1]  # the 0.5 scale level is not read by the detector (``scalp=1``)
    text = prompts.features
    geometry = geometry_cls(model, fpn, pos, q)
    prompt = torch.cat([text, geometry.last_hidden_state], dim=1)  # promoted as the official torch.cat
    mask = torch.cat([prompts.mask, geometry.attention_mask.bool()], dim=1)
    encoded = model.detr_encoder(vision_features=[fpn[-1]], text_features=prompt, vision_pos_embeds=[pos[-1]],
                                 text_mask=mask)
    decoded = model.detr_decoder(vision_features=encoded.last_hidden_state, text_features=encoded.text_features,
                                 vision_pos_encoding=encoded.pos_embeds_flattened, text_mask=mask,
                                 spatial_shapes=encoded.spatial_shapes)
    hidden = decoded.intermediate_hidden_states
    boxes = (inverse_sigmoid(decoded.reference_boxes) + model.detr_decoder.box_head(hidden)).sigmoid()[-1]
    logits = model.dot_product_scoring(decoder_hidden_states=hidden, text_features=encoded.text_features,
                                       text_mask=mask).squeeze(-1)[-1]
    heads = model.mask_decoder(decoder_queries=hidden[-1], backbone_features=list(fpn),
                               encoder_hidden_states=encoded.last_hidden_state, prompt_features=prompt,
                               prompt_mask=mask)
    return Grounding(logits, boxes, heads.pred_masks, decoded.presence_logits[-1].reshape(q), heads.semantic_seg)


@dataclass(frozen=True)
class FusionRule:
    """SegEarth-OV3's three switches and the processor's threshold (``configs/cfg_*.py``)."""
    confidence: float = 0.5             # confidence_threshold: objects kept when their object score exceeds it
    instances: bool = True              # use_transformer_decoder: the kept objects' masks x object scores
    semantic: bool = True               # use_sem_seg: the semantic head's map
    presence: bool = True               # use_presence_score: everything x the prompt's presence score


def object_scores(g: Grounding) -> torch.Tensor:
    """``[Q, N]`` ``sigmoid(logit) * sigmoid(presence)``: the processor's "object score" of every query."""
    return g.logits.sigmoid() * g.presence.sigmoid()[:, None]


def kept_instance_map(masks: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor,
                      size: tuple[int, int], chunk: int = 16) -> torch.Tensor | None:
    """``[h, w]`` max over the kept objects of ``sigmoid(mask resized to size) x object score`` (None: none kept),
    in the autocast's dtype as the processor computes it. The kept masks are resized ``chunk`` at a time (a whole
    UAVid frame is one window: 200 kept masks at 3840 x 2160 would be 6 GB at once)."""
    if not bool(keep.any()):
        return None
    kept, weights = masks[keep], scores[keep]
    out = None
    for start in range(0, len(kept), chunk):
        up = F.interpolate(kept[start:start + chunk][:, None], size=size, mode="bilinear", align_corners=False)
        part = (up.sigmoid()[:, 0] * weights[start:start + chunk][:, None, None]).amax(dim=0)
        out = part if out is None else torch.maximum(out, part)
    return out


def window_maps(g: Grounding, size: tuple[int, int], rule: FusionRule,
                instance_scores: torch.Tensor | None = None) -> torch.Tensor:
    """``[Q, h, w]`` float32 maps of one window (step 5 of the module's description). ``instance_scores`` replaces
    the object scores the kept masks are weighted by (the CLIP re-scoring fusion); which objects are kept is
    always decided by SAM 3's own score."""
    scores = object_scores(g)
    keep = scores > rule.confidence
    weights = scores if instance_scores is None else instance_scores.to(scores.dtype)
    out = torch.zeros((len(g.presence),) + tuple(size), device=g.masks.device)
    semantic = F.interpolate(g.semantic, size=size, mode="bilinear", align_corners=False).sigmoid()[:, 0] \
        if rule.semantic else None
    presence = g.presence.sigmoid()
    for q in range(len(out)):
        if rule.instances:
            inst = kept_instance_map(g.masks[q], weights[q], keep[q], size)
            if inst is not None:
                out[q] = torch.maximum(out[q], inst)
        if semantic is not None:
            out[q] = torch.maximum(out[q], semantic[q])
        if rule.presence:
            out[q] = out[q] * presence[q]
    return out


def synonym_max(maps: torch.Tensor, query_to_class: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, H, W]`` a class's map: the max over its names' maps and 0 (SegEarth-OV3's ``(seg_logits * one_hot)
    .max(1)``: the one-hot product puts a 0 beside each class's own values)."""
    if maps.shape[0] == num_classes and torch.equal(query_to_class.cpu(), torch.arange(num_classes)):
        return maps
    out = maps.new_zeros((num_classes,) + maps.shape[1:])
    idx = query_to_class.to(maps.device).view(-1, 1, 1).expand_as(maps)
    return out.scatter_reduce_(0, idx, maps, reduce="amax", include_self=True)


@dataclass
class Sam3Runtime:
    """SAM 3 set up for one run: the model, the class prompts encoded once, the fusion rule and the precision.

    ``window_batch``: windows per image-encoder call; ``prompt_batch``: class prompts per decoder call (a prompt's
    decoder activations are about 0.25 GB at the full size: the batch bounds them)."""
    model: object
    prompts: Sam3Prompts
    rule: FusionRule
    autocast: bool = False
    window_batch: int = 1
    prompt_batch: int = 8
    resolution: int = field(init=False)

    def __post_init__(self):
        self.resolution = int(self.model.config.vision_config.backbone_config.image_size)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @torch.no_grad()
    def groundings(self, windows: Sequence[torch.Tensor]):
        """``(index, window, first prompt, Grounding)`` for uint8 ``[3, h, w]`` windows: the image encoder once per
        window (``window_batch`` windows a call), the prompts ``prompt_batch`` at a time against its features."""
        for start in range(0, len(windows), self.window_batch):
            chunk = windows[start:start + self.window_batch]
            with bf16_autocast(self.device, self.autocast):
                pixels = sam3_pixels([w.to(self.device) for w in chunk], self.resolution)
                vision = self.model.get_vision_features(pixel_values=pixels)
            for i, window in enumerate(chunk):
                one = _one_window(vision, i)
                for p in range(0, len(self.prompts), self.prompt_batch):
                    with bf16_autocast(self.device, self.autocast):
                        g = ground(self.model, one, self.prompts.take(p, p + self.prompt_batch))
                    yield start + i, window, p, g  # outside the autocast: the caller's code is not in it

    @torch.no_grad()
    def maps(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``[Q, h, w]`` float32 maps of each uint8 ``[3, h, w]`` window (SegEarth-OV3's ``_inference_single_view``)."""
        out = [torch.empty((len(self.prompts),) + tuple(w.shape[-2:]), device=self.device) for w in windows]
        for i, window, p, g in self.groundings(windows):
            with bf16_autocast(self.device, self.autocast):
                out[i][p:p + len(g.presence)] = window_maps(g, tuple(window.shape[-2:]), self.rule)
        return out

    @torch.no_grad()
    def image_maps(self, image: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]],
                   window_maps_fn=None) -> torch.Tensor:
        """``[Q, H, W]`` float32: the windows ``boxes`` (``(y1, y2, x1, x2)``) of a uint8 ``[3, H, W]`` image, each
        through :meth:`maps` (or ``window_maps_fn``), averaged where they overlap (``slide_inference``); NaN where
        no window covers a pixel."""
        fn = window_maps_fn or self.maps
        H, W = image.shape[-2:]
        sums = torch.zeros((len(self.prompts), H, W), device=self.device)
        counts = torch.zeros((1, H, W), device=self.device)
        step = max(1, self.window_batch)
        for start in range(0, len(boxes), step):
            chunk = boxes[start:start + step]
            crops = [image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]
            for (y1, y2, x1, x2), m in zip(chunk, fn(crops)):
                sums[:, y1:y2, x1:x2] += m
                counts[:, y1:y2, x1:x2] += 1
        return sums / counts


def _one_window(vision, i: int):
    """Window ``i`` of a batched image-encoder output, as a batch of one."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    return Sam3VisionEncoderOutput(fpn_hidden_states=tuple(t[i:i + 1] for t in vision.fpn_hidden_states),
                                   fpn_position_encoding=tuple(t[i:i + 1] for t in vision.fpn_position_encoding))


def sam3_windows(h: int, w: int, crop: int | None, stride: int | None) -> list[tuple[int, int, int, int]]:
    """SegEarth-OV3's windows over an ``h x w`` image: the sliding grid when ``crop`` is set and smaller than a side
    (``slide_inference``, the same arithmetic as :func:`~farslip.engine.window_boxes`), else the whole image."""
    from .windows import window_boxes

    if crop and crop > 0 and (crop < w or crop < h):
        return window_boxes(h, w, crop, stride or crop)
    return [(0, h, 0, w)]


#: Image tokens x prompts one decoder call may hold on a CPU: the full size's 72 x 72 tokens, one prompt.
CPU_PROMPT_TOKENS = 72 * 72


def cpu_prompt_batch(model) -> int:
    """Class prompts per decoder call on a CPU: as many as fit :data:`CPU_PROMPT_TOKENS` (at most 8). A prompt's
    decoder activations grow with the image tokens (about 0.25 GB at the full size). On a CPU, batching prompts
    saves per-call overhead, which dominates only for small models: measured at 8 prompts, 6.3x the one-prompt
    loop with the tiny config but 0.97x at the full size, where the batch only grew the peak (2,048^2 segment:
    5593 MiB at 4 prompts a call, 5037 MiB at 1, same speed; docs/performance.md, "SAM 3")."""
    b = model.config.vision_config.backbone_config
    tokens = (int(b.image_size) // int(b.patch_size)) ** 2
    return max(1, min(8, CPU_PROMPT_TOKENS // max(tokens, 1)))


def sam3_runtime(model, tokenizer, names: Sequence[str], rule: FusionRule, *, autocast: bool = False,
                 window_batch: int | None = None, prompt_batch: int | None = None) -> Sam3Runtime:
    """A :class:`Sam3Runtime` for ``names`` (each a text prompt), the prompts encoded now. Defaults: one window
    per image-encoder call and :func:`cpu_prompt_batch` prompts per decoder call on the CPU (1 at the full size,
    8 at the tests' tiny size), 8 and 16 on an accelerator."""
    on_cpu = model_device(model).type == "cpu"
    prompts = encode_prompts(model, tokenizer, names, autocast=autocast)
    return Sam3Runtime(model, prompts, rule, autocast, window_batch or (1 if on_cpu else 8),
                       prompt_batch or (cpu_prompt_batch(model) if on_cpu else 16))
