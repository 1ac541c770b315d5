"""Dense (patch) features from a stock open_clip ViT by last-layer surgery (spec section 3).

The trunk (all blocks but the last) runs once; its output feeds both the ordinary last block (for the global
CLS embedding) and the modified last block (for the dense tokens), so asking for both costs one extra block,
not a second forward pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core.errors import UsageError
from .attention import ATTENTION_VARIANTS


def interpolate_pos_embed(pos: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a ViT positional embedding ``[1 + g*g, C]`` to a ``gh x gw`` patch grid.

    Uses SegEarth-OV's arithmetic (a scale factor of ``(g' + 0.1) / g`` rather than a target size), so OVSS on
    images smaller than a window reproduces the reference numbers.
    """
    n = pos.shape[0] - 1
    g = math.isqrt(n)
    if (g, g) == tuple(grid_hw):
        return pos
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    factor = ((grid_hw[0] + 0.1) / g, (grid_hw[1] + 0.1) / g)
    patches = F.interpolate(patches, scale_factor=factor, mode="bicubic")
    assert tuple(patches.shape[-2:]) == tuple(grid_hw)
    patches = patches.permute(0, 2, 3, 1).reshape(grid_hw[0] * grid_hw[1], -1).to(pos.dtype)
    return torch.cat([cls, patches], dim=0)


def _trunk(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch embedding + all transformer blocks but the last. Returns ``([B, 1+N, C], (gh, gw))``."""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    transformer = visual.transformer
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        if transformer.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, None, None, None, use_reentrant=False)
        else:
            x = block(x)
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    return x, grid


def surgery_attention(block: nn.Module, x: torch.Tensor, attn: str = "segearth") -> torch.Tensor:
    """The modified last block: ``out_proj(A v)`` over ``ln_1(x)``, no residual, no MLP. ``x``: ``[B, N, C]``."""
    mha = block.attn
    h = block.ln_1(x)
    B, N, C = h.shape
    heads = mha.num_heads
    q, k, v = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, N, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # [B, H, N, d]
    scale = (C // heads) ** -0.5

    def attend(a, b):  # softmax(scale * a b^T) v, fused (scaled-dot-product attention kernels)
        return F.scaled_dot_product_attention(a, b, v, scale=scale)

    if attn == "segearth":
        out = attend(q, q) + attend(k, k) + attend(v, v)  # (A_q + A_k + A_v) v, one product per term
    elif attn == "sclip":
        out = attend(q, q) + attend(k, k)
    elif attn == "clearclip":
        out = attend(q, q)
    elif attn == "maskclip":
        out = v  # identity attention: each token attends only to itself
    elif attn == "vanilla":
        out = attend(q, k)
    else:
        raise ValueError(f"attn must be one of {ATTENTION_VARIANTS}, got {attn!r}")
    out = out.transpose(1, 2).reshape(B, N, C)
    return mha.out_proj(out)


def _ordinary_last_block(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    block = visual.transformer.resblocks[-1]
    if not visual.transformer.batch_first:
        return block(x.transpose(0, 1)).transpose(0, 1)
    return block(x)


def _project(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x @ visual.proj if visual.proj is not None else x


class DenseFeaturesError(UsageError, TypeError):
    """The model has no dense features of this kind (e.g. a ResNet CLIP such as RemoteCLIP RN50)."""


def _check_visual(model: nn.Module) -> nn.Module:
    visual = getattr(model, "visual", model)
    is_vit = hasattr(visual, "conv1") and hasattr(visual, "class_embedding") and hasattr(visual, "transformer")
    if not is_vit or getattr(visual, "attn_pool", None) is not None:
        raise DenseFeaturesError(f"dense features need an open_clip VisionTransformer without attentional pooling; "
                                 f"this model's image encoder is a {type(visual).__name__} (segmentation and OVSS "
                                 "need a ViT model; classification and search work with any)")
    if not isinstance(visual.transformer.resblocks[-1].attn, nn.MultiheadAttention):
        raise DenseFeaturesError("dense features need the default open_clip attention block (nn.MultiheadAttention)")
    return visual


def encode_views(model: nn.Module, images: torch.Tensor, attn: str = "segearth", *,
                 dense_rows: slice | None = slice(None), cls_rows: slice | None = slice(None),
                 cls_from: str = "ordinary"):
    """Run the shared trunk once over ``images``; dense tokens for ``dense_rows``, global embeddings for ``cls_rows``.

    Lets an objective push all views of a step through one encoder call while paying for the modified and the
    ordinary last block only on the rows that need each. ``None`` skips that output. ``cls_from="surgery"`` takes
    the CLS row of the modified block instead (what SegEarth-OV uses for its CLS-bias); it needs
    ``dense_rows == cls_rows``.
    """
    visual = _check_visual(model)
    x, (gh, gw) = _trunk(visual, images)
    tokens = cls = None
    if dense_rows is not None:
        xd = x[dense_rows]
        out = visual.ln_post(surgery_attention(visual.transformer.resblocks[-1], xd, attn))
        tokens = _project(visual, out[:, 1:]).reshape(xd.shape[0], gh, gw, -1)
        if cls_from == "surgery" and cls_rows is not None:
            if cls_rows != dense_rows:
                raise ValueError("cls_from='surgery' needs cls_rows == dense_rows")
            return tokens, _project(visual, out[:, 0])
    if cls_rows is not None:
        if cls_from != "ordinary":  # (a surgery CLS was returned above)
            raise ValueError(f"cls_from must be 'ordinary' or 'surgery', got {cls_from!r}")
        pooled, _ = visual._pool(_ordinary_last_block(visual, x[cls_rows]))  # open_clip's pooling: ln_post, CLS
        cls = _project(visual, pooled)
    return tokens, cls


def dense_features(model: nn.Module, images: torch.Tensor, attn: str = "segearth", *,
                   with_cls: bool = True, cls_from: str = "ordinary") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense tokens and the global embedding of ``images`` ``[B, 3, H, W]`` (any size the patches tile).

    Returns:
        tokens: ``[B, gh, gw, D]`` from the modified last block, after ln_post and the visual projection
            (joint embedding space, not normalised);
        cls: ``[B, D]`` the ordinary global image embedding (intact last block), or with ``cls_from="surgery"``
            the CLS row of the modified block (SegEarth-OV's CLS-bias input); None if ``with_cls=False``.
    """
    if attn not in ATTENTION_VARIANTS:
        raise ValueError(f"attn must be one of {ATTENTION_VARIANTS}, got {attn!r}")
    return encode_views(model, images, attn, cls_rows=slice(None) if with_cls else None, cls_from=cls_from)
