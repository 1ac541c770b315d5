"""Straightforward transcriptions of the two official OVSS loops, for the tests to hold farslip against.

Written from reading NJU-LHRS/RS-OVSS (customized_segmentor.py: ``CustomizedSegmentation``; its open_clip fork's
``VisionTransformer.forward`` / ``custom_attn``) and likyoo/SegEarth-OV (segearth_segmentor.py,
simfeatup_dev/upsamplers.py): one image, one window at a time, explicit attention products, the official
order of operations. Nothing here is shared with farslip's engine except the stock open_clip model it runs.
"""
from __future__ import annotations

import cv2
import numpy as np
import open_clip
import torch
import torch.nn.functional as F

MEAN = [122.771, 116.746, 104.094]
STD = [68.501, 66.632, 70.323]


# ------------------------------------------------------------------------------------------------ mmcv pipeline

def mmcv_load_resize(path, scale=448):
    """LoadImageFromFile (cv2.imdecode, colour, BGR) + Resize(scale=(s, s), keep_ratio=True) + the data
    preprocessor (BGR -> RGB, (x - mean) / std). Returns ``[1, 3, h, w]`` float32 and the original size."""
    bgr = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    h, w = bgr.shape[:2]
    if scale:
        factor = min(max(scale, scale) / max(h, w), min(scale, scale) / min(h, w))
        new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    return x[None], (h, w)


# ------------------------------------------------------------------------------------------------ text queries

def class_queries(lines):
    """get_cls_idx: every comma-separated name, and its class."""
    names, idx = [], []
    for i, line in enumerate(lines):
        for n in line.split(","):
            names.append(n.replace("\n", ""))
            idx.append(i)
    return names, idx


@torch.no_grad()
def query_features(model, tokenizer, names):
    out = []
    for qw in names:
        f = model.encode_text(tokenizer([t(qw) for t in open_clip.OPENAI_IMAGENET_TEMPLATES]))
        f = f / f.norm(dim=-1, keepdim=True)
        f = f.mean(dim=0)
        f = f / f.norm()
        out.append(f[None])
    return torch.cat(out, dim=0)


# ------------------------------------------------------------------------------------------------ the encoder

def _custom_attn(attn_layer, x, model_type):
    """custom_attn, sequence-first ``x`` [N, B, C]."""
    num_heads = attn_layer.num_heads
    n, bsz, c = x.size()
    head_dim = c // num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    if model_type == "SegEarth":
        w = (F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
             + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)
             + F.softmax(torch.bmm(v, v.transpose(1, 2)) * scale, dim=-1))
    elif model_type == "vanilla":
        w = F.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)
    else:
        raise NotImplementedError(model_type)
    out = torch.bmm(w, v).transpose(0, 1).contiguous().view(-1, bsz, c)
    return attn_layer.out_proj(out)


def _pos_embed(visual, x, w, h):
    """interpolate_pos_encoding (SegEarth-OV / RS-OVSS fork): bicubic by scale factor (g' + 0.1) / g."""
    pos = visual.positional_embedding
    npatch, n = x.shape[1] - 1, pos.shape[0] - 1
    if npatch == n and w == h:
        return pos
    patch = visual.conv1.kernel_size[0]
    g = int(np.sqrt(n))
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    p = F.interpolate(pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2), scale_factor=(w0 / g, h0 / g),
                      mode="bicubic")
    p = p.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
    return torch.cat((pos[[0]].unsqueeze(0), p), dim=1)


@torch.no_grad()
def encode_image(model, x, model_type="SegEarth", output_cls_token=False):
    """VisionTransformer.forward with ignore_residual=True: (cls, tokens [B, N, D]) or tokens."""
    visual = model.visual
    _, _, w, h = x.shape
    x = visual.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + _pos_embed(visual, x, w, h).to(x.dtype)
    else:
        x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = x if batch_first else x.permute(1, 0, 2)
    for blk in blocks[:-1]:
        x = blk(x)
    x = x.permute(1, 0, 2) if batch_first else x  # -> [N, B, C] as the fork runs it
    out = _custom_attn(blocks[-1].attn, blocks[-1].ln_1(x), model_type).permute(1, 0, 2)
    out = visual.ln_post(out)
    pooled, tokens = out[:, 0], out[:, 1:]
    pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
    return (pooled, tokens) if output_cls_token else tokens


# ------------------------------------------------------------------------------------------------ RS-OVSS

def _padsize(H, W, patch):
    l = r = t = b = 0
    if W % patch:
        lr = patch - (W % patch)
        l, r = lr // 2, lr - lr // 2
    if H % patch:
        tb = patch - (H % patch)
        t, b = tb // 2, tb - tb // 2
    return l, r, t, b


@torch.no_grad()
def rs_ovss_forward_feature(model, inputs, query, image_size, patch, cls_lambda=0.0):
    """CustomizedSegmentation.forward_feature (open_clip branch): resize to the model's input when it differs."""
    if inputs.shape[-2:] != (image_size, image_size):
        resized = F.interpolate(inputs, size=(image_size, image_size), mode="bilinear")
    else:
        resized = inputs
    out = encode_image(model, resized, "SegEarth", cls_lambda != 0)
    if cls_lambda != 0:
        cls, feats = out
        cls = cls / cls.norm(dim=-1, keepdim=True)
        cls_logits = cls @ query.T
    else:
        feats = out
    feats = feats / feats.norm(dim=-1, keepdim=True)
    logits = feats @ query.T
    if cls_lambda != 0:
        logits = logits + cls_logits.unsqueeze(1) * cls_lambda
    w, h = image_size // patch, image_size // patch
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], w, h)
    return F.interpolate(logits, size=inputs.shape[-2:], mode="bilinear")


@torch.no_grad()
def slide(img, num_queries, ori_shape, window_fn, stride=112, crop=224, patch=16):
    """forward_slide (the same in both codes), ``window_fn(padded crop) -> logits at the crop's size``."""
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    preds = img.new_zeros((1, num_queries, h_img, w_img))
    count = img.new_zeros((1, 1, h_img, w_img))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * stride, wi * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            H, W = crop_img.shape[2:]
            pad = _padsize(H, W, patch)
            if any(pad):
                crop_img = F.pad(crop_img, pad)
            seg = window_fn(crop_img)
            if any(pad):
                seg = seg[:, :, pad[2]:pad[2] + H, pad[0]:pad[0] + W]
            preds += F.pad(seg, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    return F.interpolate(preds / count, size=ori_shape, mode="bilinear")


def postprocess(seg_logits, query_idx, logit_scale=50.0, prob_thd=0.0, bg_idx=0):
    """postprocess_result for one image: class probabilities [C, H, W] and the label map [H, W]."""
    seg = (seg_logits[0] * logit_scale).softmax(0)
    idx = torch.tensor(query_idx)
    num_cls, num_q = int(idx.max()) + 1, len(query_idx)
    if num_cls != num_q:
        onehot = F.one_hot(idx).T.view(num_cls, num_q, 1, 1)
        seg = (seg.unsqueeze(0) * onehot).max(1)[0]
    pred = seg.argmax(0, keepdim=True)
    pred[seg.max(0, keepdim=True)[0] < prob_thd] = bg_idx
    return seg, pred[0]


@torch.no_grad()
def rs_ovss_image(model, img, ori_shape, query, query_idx, *, crop=224, stride=112, cls_lambda=0.0):
    """RS-OVSS CustomizedSegmentation.predict on one preprocessed image: (window-averaged logits at the original
    size [1, Q, H, W], class probabilities, label map)."""
    patch = model.visual.conv1.kernel_size[0]
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    logits = slide(img, query.shape[0], ori_shape,
                   lambda c: rs_ovss_forward_feature(model, c, query, image_size, patch, cls_lambda),
                   stride=stride, crop=crop, patch=patch)
    probs, pred = postprocess(logits, query_idx)
    return logits, probs, pred


# ------------------------------------------------------------------------------------------------ SegEarth-OV

@torch.no_grad()
def segearth_forward_feature(model, img, query, cls_lambda=-0.3, upsampler=None):
    """SegEarthSegmentation.forward_feature: the window at its own size; SimFeatUp on the features if given."""
    patch = model.visual.conv1.kernel_size[0]
    out = encode_image(model, img, "SegEarth", cls_lambda != 0)
    if cls_lambda != 0:
        cls, feats = out
        cls = cls / cls.norm(dim=-1, keepdim=True)
        cls_logits = cls @ query.T
    else:
        feats = out
    H, W = img.shape[-2:]
    if upsampler is not None:
        dim = feats.shape[-1]
        feats = feats.permute(0, 2, 1).reshape(1, dim, H // patch, W // patch)
        feats = upsampler(feats, img)
        feats = feats.reshape(1, dim, H * W).permute(0, 2, 1)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    logits = feats @ query.T
    if cls_lambda != 0:
        logits = logits + cls_logits * cls_lambda
    gh, gw = (H, W) if upsampler is not None else (H // patch, W // patch)
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], gh, gw)
    return F.interpolate(logits, size=img.shape[-2:], mode="bilinear")


@torch.no_grad()
def segearth_image(model, img, ori_shape, query, query_idx, *, crop=224, stride=112, cls_lambda=-0.3,
                   prob_thd=0.0, bg_idx=0, upsampler=None):
    patch = model.visual.conv1.kernel_size[0]
    logits = slide(img, query.shape[0], ori_shape,
                   lambda c: segearth_forward_feature(model, c, query, cls_lambda, upsampler),
                   stride=stride, crop=crop, patch=patch)
    probs, pred = postprocess(logits, query_idx, prob_thd=prob_thd, bg_idx=bg_idx)
    return logits, probs, pred


# ------------------------------------------------------------------------------------------------ SimFeatUp

def jbu_one_reference(state, feats, image):
    """SegEarth-OV's JBUOne forward from a state dict (keys without the ``upsampler.`` prefix), with the
    unfold-based adaptive convolution of its ``adaptive_conv_py_simple``."""
    radius, diameter, key_dim = 5, 11, 32

    def conv(x, name):
        return F.conv2d(x, state[name + ".weight"], state[name + ".bias"])

    def jbu(source, guidance):
        gb, _, gh, gw = guidance.shape
        d = torch.linspace(-1, 1, diameter)
        x, y = torch.meshgrid(d, d, indexing="ij")
        patch = torch.cat([x.unsqueeze(0), y.unsqueeze(0)], dim=0)
        spatial = torch.exp(-patch.square().sum(0) / (2 * state["up.sigma_spatial"] ** 2)).reshape(1, -1, 1, 1)
        proj = conv(F.gelu(conv(guidance, "up.range_proj.0")), "up.range_proj.3")
        padded = F.pad(proj, [radius] * 4, mode="reflect")
        queries = F.unfold(padded, diameter).reshape(gb, key_dim, diameter * diameter, gh, gw).permute(0, 1, 3, 4, 2)
        temp = state["up.range_temp"].exp().clamp_min(1e-4).clamp_max(1e4)
        rng = F.softmax(temp * torch.einsum("bchwp,bchw->bphw", queries, proj), dim=1)
        kernel = rng * spatial
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        kernel = kernel + 0.1 * conv(F.gelu(conv(torch.cat([kernel, guidance], 1), "up.fixup_proj.0")),
                                     "up.fixup_proj.3")
        kernel = kernel.permute(0, 2, 3, 1).reshape(gb, gh, gw, diameter, diameter)
        hr = F.interpolate(source, (gh, gw), mode="bicubic", align_corners=False)
        hr = F.pad(hr, [radius] * 4, mode="reflect")
        b, c = hr.shape[:2]
        patches = F.unfold(hr, diameter).view(b, c, diameter * diameter, gh, gw)
        return torch.einsum("bhwf,bcfhw->bchw", kernel.reshape(b, gh, gw, -1), patches)

    x = feats
    for _ in range(4):
        x = jbu(x, F.adaptive_avg_pool2d(image, (x.shape[-2] * 2, x.shape[-1] * 2)))
    return conv(x, "fixup_proj.1") * 0.1 + x
