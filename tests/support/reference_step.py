"""The official FarSLIP training step's data flow, written straightforwardly (no batching across views).

Kept as the numeric reference for farslip's objectives and as the baseline of the speed benchmarks: each view set
goes through the encoder in its own call, boxes are handled per sample, region features are padded to
``batch_size * max_boxes`` as the official train_one_epoch does. Only single-process.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from farslip.models.dense import encode_views


def _ordinary(model, images):
    return model.encode_image(images)


def _dense(model, images, attn):
    tokens, _ = encode_views(model, images, attn, cls_rows=None)
    return tokens.flatten(1, 2)  # [N, g*g, D] as the official "patches" outputs


def _normed_roi_features(patches, boxes_list, grid):
    B, N, D = patches.shape
    H, W = grid
    maps = patches.view(B, H, W, D).permute(0, 3, 1, 2)
    rois = []
    for boxes in boxes_list:  # per sample, as the official _denormalize_boxes
        b = boxes.clone()
        b[:, [0, 2]] *= W
        b[:, [1, 3]] *= H
        rois.append(b)
    feats = roi_align(maps, rois, output_size=grid, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return F.normalize(feats.mean(dim=[2, 3]), dim=-1)


def _clip_loss(img, txt, scale):
    logits = scale * img @ txt.t()
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def reference_stage1(model, batch, distill_align="roi2pooled", attn="segearth", teacher=None, w_g=1.0, w_d=0.1):
    images, texts = batch["images"], batch["texts"]
    B, K = batch["crop_images"].shape[:2]
    crops = batch["crop_images"].reshape(B * K, *batch["crop_images"].shape[2:])
    global_pooled = F.normalize(_ordinary(model, images), dim=-1)
    global_text = F.normalize(model.encode_text(texts), dim=-1)
    scale = model.logit_scale.exp()
    losses = {"global_itc": _clip_loss(global_pooled, global_text, scale)}

    global_patches = _dense(model, images, attn)
    g = int(round(global_patches.shape[1] ** 0.5))
    student = _normed_roi_features(global_patches, [b for b in batch["crop_boxes"]], (g, g))
    src = model if teacher is None else teacher
    ctx = torch.enable_grad() if teacher is None else torch.no_grad()
    with ctx:
        subset_patches = _dense(src, crops, attn)
        subset_pooled = _ordinary(src, crops)
    t_pooled = F.normalize(subset_patches.mean(dim=1), dim=-1)
    t_cls = F.normalize(subset_pooled, dim=-1)
    loss_pooled = 1.0 - (student * t_pooled).sum(-1).mean()
    loss_cls = 1.0 - (student * t_cls).sum(-1).mean()
    losses["distill"] = {"roi2pooled": loss_pooled, "roi2cls": loss_cls,
                         "combined": 0.5 * loss_cls + 0.5 * loss_pooled}[distill_align]
    losses["total"] = w_g * losses["global_itc"] + w_d * losses["distill"]
    return losses


def _mpcl(img, txt, scale, labels):
    keep = labels != -1
    img, txt, labels = img[keep], txt[keep], labels[keep]
    logits = scale * img @ txt.t()
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    i2t = -(targets * F.log_softmax(logits, 1)).sum(1).mean()
    t2i = -(targets * F.log_softmax(logits.t(), 1)).sum(1).mean()
    return (i2t + t2i) / 2


def reference_stage2(model, batch, region_align="cls", attn="segearth", multi_positive=True, w_g=1.0, w_l=1.0):
    images, texts = batch["images"], batch["texts"]
    B, R = batch["region_labels"].shape
    scale = model.logit_scale.exp()
    global_pooled = F.normalize(_ordinary(model, images), dim=-1)
    global_text = F.normalize(model.encode_text(texts), dim=-1)
    losses = {"global_itc": _clip_loss(global_pooled, global_text, scale)}

    # Concatenate the valid regions image by image, as the official loader output is consumed.
    local_images, local_texts, local_labels, boxes_list = [], [], [], []
    for b in range(B):
        v = batch["region_valid"][b]
        local_images.append(batch["region_images"][b][v])
        local_texts.append(batch["region_texts"][b][v])
        local_labels.append(batch["region_labels"][b][v])
        boxes_list.append(batch["region_boxes"][b][v])
    local_images, local_texts = torch.cat(local_images), torch.cat(local_texts)
    local_labels = torch.cat(local_labels)
    if region_align == "cls":
        local = F.normalize(_ordinary(model, local_images), dim=-1)
    elif region_align == "pooled":
        local = F.normalize(_dense(model, local_images, attn).mean(dim=1), dim=-1)
    else:
        patches = _dense(model, images, attn)
        g = int(round(patches.shape[1] ** 0.5))
        local = _normed_roi_features(patches, boxes_list, (g, g))
    local_text = F.normalize(model.encode_text(local_texts), dim=-1)
    losses["region_itc"] = _padded_region_itc(local, local_text, local_labels, B * R, scale, multi_positive)
    losses["total"] = w_g * losses["global_itc"] + w_l * losses["region_itc"]
    return losses


def _padded_region_itc(local, local_text, local_labels, total_len, scale, multi_positive):
    """Region contrast as the official code feeds it: region features padded with zeros to ``B * max_boxes``
    rows, label -1 on the padding."""
    pad = total_len - local.shape[0]
    img = torch.cat([local, local.new_zeros(pad, local.shape[1])])
    txt = torch.cat([local_text, local_text.new_zeros(pad, local_text.shape[1])])
    labels = torch.cat([local_labels, local_labels.new_full((pad,), -1)])
    if multi_positive:
        return _mpcl(img, txt, scale, labels)
    keep = labels != -1
    return _clip_loss(img[keep], txt[keep], scale)
