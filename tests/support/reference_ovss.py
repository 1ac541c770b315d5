"""SegEarth-OV's sliding-window inference, one window at a time (its ``forward_slide`` + ``forward_feature``).

The same transcription the test suite holds farslip's batched windows against (tests/eval/test_eval_windows.py),
kept here as the baseline of the OVSS benchmark. Batch of one image; each window is padded to a patch multiple,
encoded on its own, its logits upsampled and added into the image's sum and count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import farslip


@torch.no_grad()
def segearth_slide(model, img, query, crop=224, stride=112, cls_lambda=-0.3, attn="segearth"):
    img = img[None]
    patch = model.visual.conv1.kernel_size[0]
    h_stride = w_stride = stride
    h_crop = w_crop = crop
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((1, query.shape[0], h_img, w_img))
    count_mat = img.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            H, W = crop_img.shape[2:]
            l = r = t = b = 0
            if W % patch:
                lr = patch - W % patch
                l, r = lr // 2, lr - lr // 2
            if H % patch:
                tb = patch - H % patch
                t, b = tb // 2, tb - tb // 2
            pad = (l, r, t, b)
            if any(pad):
                crop_img = F.pad(crop_img, pad)
            tokens, cls = farslip.dense_features(model, crop_img, attn, cls_from="surgery")
            feats = tokens.reshape(1, -1, tokens.shape[-1])
            feats = feats / feats.norm(dim=-1, keepdim=True)
            cls = cls / cls.norm(dim=-1, keepdim=True)
            logits = feats @ query.T + (cls @ query.T)[:, None, :] * cls_lambda
            gh, gw = crop_img.shape[-2] // patch, crop_img.shape[-1] // patch
            logits = logits.permute(0, 2, 1).reshape(-1, query.shape[0], gh, gw)
            seg = F.interpolate(logits, size=crop_img.shape[-2:], mode="bilinear")
            if any(pad):
                seg = seg[:, :, t:t + H, l:l + W]
            preds += F.pad(seg, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    return (preds / count_mat)[0]
