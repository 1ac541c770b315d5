"""FarSLIPObjective: the paper's two stages and every ablation it compares, as one configurable loss.

    objective = FarSLIPObjective.stage1()            # global ITC + patch-to-patch distillation
    losses = objective(model, batch)                 # {"global_itc", "distill", "total"}
    losses["total"].backward()

The batch follows farslip.data.batch. All views of a step go through the image encoder in one call (the trunk is
shared; the ordinary and the modified last block run only on the rows that need them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.errors import UsageError
from ..data.batch import STAGE1_KEYS, STAGE2_KEYS, check_batch
from ..models.dense import ATTENTION_VARIANTS, encode_views
from .contrastive import clip_loss, multi_positive_loss, sigmoid_loss
from .distill import cosine_distill_loss, roi_pooled

DISTILL_ALIGNS = ("roi2pooled", "roi2cls", "combined")
TARGETS = ("active", "ema", "frozen")
REGION_ALIGNS = ("cls", "pooled", "roi")
CAPTION_REGIONS = ("drop", "classes")
GLOBAL_LOSSES = ("softmax", "sigmoid")


@dataclass
class FarSLIPObjective:
    """Weighted sum of global image-text contrast, self-distillation and region-category alignment.

    Args:
        distill: ``roi2pooled`` (FarSLIP, patch-to-patch), ``roi2cls`` (patch-to-CLS, CLIPSelf-style),
            ``combined`` (mean of both) or None (no distillation).
        target: where distillation targets come from: ``active`` (the model itself, gradients through both
            sides, the official default), ``ema`` or ``frozen`` (a teacher passed to the call).
        region: ``cls`` (FarSLIP: region view's global embedding), ``pooled`` (mean of the region view's dense
            tokens), ``roi`` (RoIAlign of the global view's dense tokens: explicit region-text alignment) or None.
        multi_positive: every region of the same category is a positive (paper); False: only its own text.
        caption_regions: objects known only by a free-text caption (label -1): ``drop`` them as the official code
            does, or treat each distinct caption as its own ``classes``.
        attn: attention variant of the dense last block used in training.
        global_loss: the global image-text term: ``softmax`` (CLIP's InfoNCE), ``sigmoid`` (SigLIP's pairwise
            sigmoid loss with the model's learned logit bias) or None: what the weights were trained with -- the
            sigmoid loss when the model has a logit bias (SigLIP, SigLIP 2), else InfoNCE.
        global_weight, distill_weight, region_weight: loss weights of the total.
        ema_momentum: momentum of the EMA teacher (used by the trainer's update_ema).
    """

    distill: str | None = None
    target: str = "active"
    region: str | None = None
    multi_positive: bool = True
    caption_regions: str = "drop"
    attn: str = "segearth"
    global_loss: str | None = None
    global_weight: float = 1.0
    distill_weight: float = 1.0
    region_weight: float = 1.0
    ema_momentum: float = 0.99

    def __post_init__(self):
        for name, value, allowed in (("distill", self.distill, DISTILL_ALIGNS + (None,)),
                                     ("target", self.target, TARGETS), ("region", self.region, REGION_ALIGNS + (None,)),
                                     ("caption_regions", self.caption_regions, CAPTION_REGIONS),
                                     ("attn", self.attn, ATTENTION_VARIANTS),
                                     ("global_loss", self.global_loss, GLOBAL_LOSSES + (None,))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    # -- the paper's presets -------------------------------------------------------------------------------------
    @classmethod
    def stage1(cls, **overrides) -> "FarSLIPObjective":
        """Stage 1: global ITC + patch-to-patch (roi2pooled) distillation, active target, weights 1 and 0.1."""
        return cls(**{"distill": "roi2pooled", "target": "active", "distill_weight": 0.1, **overrides})

    @classmethod
    def stage2(cls, **overrides) -> "FarSLIPObjective":
        """Stage 2: global ITC + CLS-token region-category alignment, multi-positive, weights 1 and 1."""
        return cls(**{"region": "cls", "multi_positive": True, "region_weight": 1.0, **overrides})

    @property
    def needs_teacher(self) -> bool:
        return self.distill is not None and self.target != "active"

    def config(self) -> dict:
        return asdict(self)

    def global_loss_for(self, model: nn.Module) -> str:
        """The global term this objective uses for ``model`` (``global_loss``, or chosen by the weights)."""
        model = getattr(model, "module", model)
        has_bias = getattr(model, "logit_bias", None) is not None
        if self.global_loss is None:
            return "sigmoid" if has_bias else "softmax"
        if self.global_loss == "sigmoid" and not has_bias:
            raise UsageError("objective.global_loss: sigmoid needs a model with a learned logit bias (SigLIP "
                             "weights); this one has none (use softmax)")
        return self.global_loss

    # -- the loss ------------------------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, batch: dict, teacher: nn.Module | None = None) -> dict[str, torch.Tensor]:
        model = getattr(model, "module", model)
        required = ("images", "texts")
        if self.distill:
            required = STAGE1_KEYS
        if self.region:
            required = tuple(dict.fromkeys(required + STAGE2_KEYS))
        check_batch(batch, required)
        if self.needs_teacher and teacher is None:
            raise ValueError(f"target={self.target!r} needs a teacher model (see farslip.objectives.make_teacher)")

        images = batch["images"]
        B = images.shape[0]
        image_emb, losses = self._image_side(model, batch, teacher)
        text_emb, region_text_emb = self._text_side(model, batch)
        scale = model.logit_scale
        if self.global_loss_for(model) == "sigmoid":
            losses["global_itc"] = sigmoid_loss(image_emb, text_emb, scale, model.logit_bias)
        else:
            losses["global_itc"] = clip_loss(image_emb, text_emb, scale)
        if self.region:
            losses["region_itc"] = self._region_loss(batch, losses.pop("_region_img"), region_text_emb, scale, B)
        total = self.global_weight * losses["global_itc"]
        if "distill" in losses:
            total = total + self.distill_weight * losses["distill"]
        if "region_itc" in losses:
            total = total + self.region_weight * losses["region_itc"]
        losses["total"] = total
        return losses

    def _image_side(self, model, batch, teacher):
        """Encode every view of the step in one call; return the global embeddings and the image-side losses."""
        images = batch["images"]
        B = images.shape[0]
        active = self.distill is not None and self.target == "active"
        # Row groups of the single encoder call: global views, then crops (active distillation), then regions.
        groups = {"global": images}
        if active:
            groups["crops"] = batch["crop_images"].flatten(0, 1)
        valid = batch["region_valid"].reshape(-1) if self.region else None
        if self.region in ("cls", "pooled"):
            groups["regions"] = batch["region_images"].flatten(0, 1)[valid]  # padding is never encoded
        rows, start = {}, 0
        for name, t in groups.items():
            rows[name] = slice(start, start + t.shape[0])
            start += t.shape[0]

        # The modified (dense) block runs on a contiguous span of rows, the ordinary block on a prefix.
        dense = []
        if self.distill or self.region == "roi":
            dense.append("global")
        if active and self.distill != "roi2cls":
            dense.append("crops")
        if self.region == "pooled":
            dense.append("regions")
        cls_groups = ["global"]
        if active and self.distill != "roi2pooled":
            cls_groups.append("crops")
        if self.region == "cls":
            cls_groups.append("regions")
        dense_span = slice(min(rows[g].start for g in dense), max(rows[g].stop for g in dense)) if dense else None
        cls_span = slice(0, max(rows[g].stop for g in cls_groups))
        x = torch.cat(list(groups.values())) if len(groups) > 1 else images
        tokens, cls = encode_views(model, x, self.attn, dense_rows=dense_span, cls_rows=cls_span)

        def dense_of(group):
            r = rows[group]
            return tokens[r.start - dense_span.start: r.stop - dense_span.start]

        losses: dict[str, torch.Tensor] = {}
        if self.distill:
            losses["distill"] = self._distill_loss(batch, dense_of("global"), tokens, cls, rows, dense_of, teacher)
        if self.region:
            if self.region == "cls":
                reg = cls[rows["regions"]]
            elif self.region == "pooled":
                reg = dense_of("regions").flatten(1, 2).mean(dim=1)
            else:  # roi: the global view's dense tokens under each region box (explicit region-text alignment)
                reg = roi_pooled(dense_of("global"), batch["region_boxes"].to(tokens.dtype))[valid]
            full = reg.new_zeros(valid.numel(), reg.shape[-1])
            losses["_region_img"] = full.index_put((valid.nonzero().squeeze(1),), reg)
        return cls[:B], losses

    def _distill_loss(self, batch, global_tokens, tokens, cls, rows, dense_of, teacher):
        student = roi_pooled(global_tokens, batch["crop_boxes"].to(global_tokens.dtype))
        want_pooled, want_cls = self.distill != "roi2cls", self.distill != "roi2pooled"
        if self.target == "active":
            tgt_tokens = dense_of("crops") if want_pooled else None
            tgt_cls = cls[rows["crops"]] if want_cls else None
        else:
            with torch.no_grad():
                tgt_tokens, tgt_cls = encode_views(
                    teacher, batch["crop_images"].flatten(0, 1), self.attn,
                    dense_rows=slice(None) if want_pooled else None, cls_rows=slice(None) if want_cls else None)
        parts = []
        if tgt_tokens is not None:
            parts.append(cosine_distill_loss(student, tgt_tokens.flatten(1, 2).mean(dim=1)))
        if tgt_cls is not None:
            parts.append(cosine_distill_loss(student, tgt_cls))
        return sum(parts) / len(parts)

    def _text_side(self, model, batch):
        texts = batch["texts"]
        if not self.region:
            return model.encode_text(texts), None
        valid = batch["region_valid"].reshape(-1)
        region_texts = batch["region_texts"].reshape(-1, texts.shape[-1])[valid]
        emb = model.encode_text(torch.cat([texts, region_texts]))
        B = texts.shape[0]
        full = emb.new_zeros(valid.numel(), emb.shape[-1])
        full = full.index_put((valid.nonzero().squeeze(1),), emb[B:])
        return emb[:B], full

    def _region_loss(self, batch, region_img, region_txt, scale, B):
        labels = batch["region_labels"].reshape(-1)
        valid = batch["region_valid"].reshape(-1)
        caption_only = labels < 0
        if self.caption_regions == "drop":
            valid = valid & ~caption_only
        elif caption_only.any():
            # Each distinct caption becomes a class of its own: ids below -1, keyed by the caption's tokens
            # (identical captions share a class; across ranks identical tokens give identical ids via hashing).
            toks = batch["region_texts"].reshape(labels.numel(), -1)[caption_only]
            weights = torch.arange(1, toks.shape[1] + 1, device=toks.device, dtype=torch.long)
            key = (toks * weights * 1000003).sum(dim=1) % (2 ** 40)
            labels = labels.clone()
            labels[caption_only] = -2 - key
        return multi_positive_loss(region_img, region_txt, labels, valid, scale, self.multi_positive)
