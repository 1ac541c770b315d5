"""Baseline (b): the official step's data flow with the trunk shared between the ordinary and the dense output.

The official ``forward_v2`` is not available to us, so we do not know whether it runs the ordinary and the dense
(surgery) path as two encoder passes (what ``reference_step.py`` does, baseline (a)) or as one trunk pass feeding
both last blocks. This variant is the second reading: one encoder call per view set (global views; crops or
regions) that returns both outputs, everything else -- per-sample box lists, the crops' CLS computed even when
the loss does not use it, padding of the region features -- exactly as ``reference_step.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from farslip.models.dense import encode_views
from .reference_step import _clip_loss, _normed_roi_features, _padded_region_itc


def _both(model, images, attn):
    """One trunk pass: dense tokens ``[N, g*g, D]`` (surgery block) and the ordinary global embedding."""
    tokens, cls = encode_views(model, images, attn)
    return tokens.flatten(1, 2), cls


def reference_stage1_shared(model, batch, distill_align="roi2pooled", attn="segearth", teacher=None, w_g=1.0,
                            w_d=0.1):
    images, texts = batch["images"], batch["texts"]
    B, K = batch["crop_images"].shape[:2]
    crops = batch["crop_images"].reshape(B * K, *batch["crop_images"].shape[2:])
    global_patches, global_cls = _both(model, images, attn)
    global_pooled = F.normalize(global_cls, dim=-1)
    global_text = F.normalize(model.encode_text(texts), dim=-1)
    scale = model.logit_scale.exp()
    losses = {"global_itc": _clip_loss(global_pooled, global_text, scale)}

    g = int(round(global_patches.shape[1] ** 0.5))
    student = _normed_roi_features(global_patches, [b for b in batch["crop_boxes"]], (g, g))
    src = model if teacher is None else teacher
    ctx = torch.enable_grad() if teacher is None else torch.no_grad()
    with ctx:
        subset_patches, subset_pooled = _both(src, crops, attn)
    t_pooled = F.normalize(subset_patches.mean(dim=1), dim=-1)
    t_cls = F.normalize(subset_pooled, dim=-1)
    loss_pooled = 1.0 - (student * t_pooled).sum(-1).mean()
    loss_cls = 1.0 - (student * t_cls).sum(-1).mean()
    losses["distill"] = {"roi2pooled": loss_pooled, "roi2cls": loss_cls,
                         "combined": 0.5 * loss_cls + 0.5 * loss_pooled}[distill_align]
    losses["total"] = w_g * losses["global_itc"] + w_d * losses["distill"]
    return losses


def reference_stage2_shared(model, batch, region_align="cls", attn="segearth", multi_positive=True, w_g=1.0,
                            w_l=1.0):
    """Stage 2 with region_align='cls' needs only ordinary embeddings: (a) already makes one pass per view set.
    For 'roi' the global view's pass gives both outputs here."""
    if region_align != "roi":
        from .reference_step import reference_stage2

        return reference_stage2(model, batch, region_align, attn, multi_positive, w_g, w_l)
    images, texts = batch["images"], batch["texts"]
    B, R = batch["region_labels"].shape
    scale = model.logit_scale.exp()
    patches, cls = _both(model, images, attn)
    global_pooled = F.normalize(cls, dim=-1)
    global_text = F.normalize(model.encode_text(texts), dim=-1)
    losses = {"global_itc": _clip_loss(global_pooled, global_text, scale)}
    local_texts, local_labels, boxes_list = [], [], []
    for b in range(B):
        v = batch["region_valid"][b]
        local_texts.append(batch["region_texts"][b][v])
        local_labels.append(batch["region_labels"][b][v])
        boxes_list.append(batch["region_boxes"][b][v])
    local_texts, local_labels = torch.cat(local_texts), torch.cat(local_labels)
    g = int(round(patches.shape[1] ** 0.5))
    local = _normed_roi_features(patches, boxes_list, (g, g))
    local_text = F.normalize(model.encode_text(local_texts), dim=-1)
    losses["region_itc"] = _padded_region_itc(local, local_text, local_labels, B * R, scale, multi_positive)
    losses["total"] = w_g * losses["global_itc"] + w_l * losses["region_itc"]
    return losses
