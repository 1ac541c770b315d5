"""Dense (patch) features by last-layer surgery, for every image tower family (spec section 3; the families are
described in farslip.models.towers and docs/models.md).

The attention variants (``segearth``: (A_q + A_k + A_v) v, ``sclip``: (A_q + A_k) v, ``clearclip``: A_q v,
``maskclip``: v, ``vanilla``: A_qk v) replace the attention of the layer that pools the image:

* CLS towers (open_clip ViT): the last transformer block, where the CLS token gathers the image. Its modified
  form is ``out_proj(A v)`` over ``ln_1(x)`` -- no residual, no MLP (SegEarth-OV, SCLIP, ClearCLIP) -- and a token
  reaches the joint space through ``ln_post`` and ``proj``, as the CLS token does.
* MAP towers (SigLIP, SigLIP 2, PE-Core): the attention-pooling head, where a learned latent query gathers the
  trunk's last tokens. Every trunk block runs as it is; the head's attention is replaced by the variant over the
  tokens (the head's own query, key and value projections applied to every token), and a token reaches the joint
  space through the head's value and output projections -- not its MLP -- then whatever follows the head
  (``fc_norm``, the classifier ``head``, open_clip's projection). This is TextRegion's readout of SigLIP 2 and PE
  region tokens (avaxiao/TextRegion, TextRegionSegmenter.py, ``siglip_value_with_sam2_attn`` /
  ``pe_value_with_sam2_attn``): value projection, output projection, no MLP; docs/models.md says why.
  Without the MLP the readout is affine and commutes with the head's weighted sums: the pooled embedding is the
  readout of the latent's weighted values plus the MLP's residual (tests/models/test_dense_families.py).

The trunk runs once for every row; the pooled embedding (the ordinary head) and the dense tokens (the modified
one) then cost one head each, only on the rows that need them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import ATTENTION_VARIANTS
from .towers import DenseFeaturesError, tower_family

_NEEDS_QUERIES = ("segearth", "sclip", "clearclip", "vanilla")

__all__ = ["ATTENTION_VARIANTS", "DenseFeaturesError", "dense_features", "encode_views", "interpolate_pos_embed",
           "surgery_attention"]


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


def _mix(q: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, attn: str, scale: float) -> torch.Tensor:
    """The variant's ``A v`` for ``[B, H, N, d]`` queries, keys and values (queries unused by ``maskclip``)."""
    def attend(a, b):  # softmax(scale * a b^T) v, fused (scaled-dot-product attention kernels)
        return F.scaled_dot_product_attention(a, b, v, scale=scale)

    if attn == "segearth":
        return attend(q, q) + attend(k, k) + attend(v, v)  # (A_q + A_k + A_v) v, one product per term
    if attn == "sclip":
        return attend(q, q) + attend(k, k)
    if attn == "clearclip":
        return attend(q, q)
    if attn == "maskclip":
        return v  # identity attention: each token attends only to itself
    if attn == "vanilla":
        return attend(q, k)
    raise ValueError(f"attn must be one of {ATTENTION_VARIANTS}, got {attn!r}")


# -- CLS towers (open_clip VisionTransformer) ---------------------------------------------------------------------

def _cls_trunk(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
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
    out = _mix(q, k, v, attn, (C // heads) ** -0.5)
    return mha.out_proj(out.transpose(1, 2).reshape(B, N, C))


def _ordinary_last_block(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    block = visual.transformer.resblocks[-1]
    if not visual.transformer.batch_first:
        return block(x.transpose(0, 1)).transpose(0, 1)
    return block(x)


def _project(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x @ visual.proj if visual.proj is not None else x


def _cls_views(visual, images, attn, dense_rows, cls_rows, cls_from):
    x, (gh, gw) = _cls_trunk(visual, images)
    tokens = cls = None
    if dense_rows is not None:
        xd = x[dense_rows]
        out = visual.ln_post(surgery_attention(visual.transformer.resblocks[-1], xd, attn))
        tokens = _project(visual, out[:, 1:]).reshape(xd.shape[0], gh, gw, -1)
        if cls_from == "surgery" and cls_rows is not None:
            return tokens, _project(visual, out[:, 0])
    if cls_rows is not None:
        pooled, _ = visual._pool(_ordinary_last_block(visual, x[cls_rows]))  # open_clip's pooling: ln_post, CLS
        cls = _project(visual, pooled)
    return tokens, cls


# -- MAP towers (open_clip TimmModel over a timm VisionTransformer or Eva with an attention-pooling head) ----------

def _map_trunk(trunk: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """timm's ``forward_features`` at any input size: patch embedding, prefix tokens, absolute positions resampled
    to the grid as timm's ``set_input_size`` / ``dynamic_img_size`` do (``resample_abs_pos_embed``), rotary
    positions of the grid (Eva), every block, the final norm. Returns ``([B, prefix + N, C], (gh, gw))``."""
    from timm.layers import resample_abs_pos_embed

    embed = trunk.patch_embed
    x = embed.proj(images.to(embed.proj.weight.dtype))
    grid = (x.shape[-2], x.shape[-1])
    x = embed.norm(x.flatten(2).transpose(1, 2))
    prefix = [t.expand(x.shape[0], -1, -1) for t in (trunk.cls_token, getattr(trunk, "reg_token", None))
              if t is not None]
    pos = trunk.pos_embed
    if pos is not None and grid != tuple(embed.grid_size):
        pos = resample_abs_pos_embed(pos, new_size=grid, old_size=embed.grid_size,
                                     num_prefix_tokens=0 if trunk.no_embed_class else trunk.num_prefix_tokens)
    if trunk.no_embed_class:
        x = torch.cat(prefix + [x if pos is None else x + pos.to(x.dtype)], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1)
        x = x if pos is None else x + pos.to(x.dtype)
    x = trunk.norm_pre(trunk.pos_drop(x))
    extra = {"rope": _rope(trunk, grid)} if getattr(trunk, "rope", None) is not None else {}
    for block in trunk.blocks:
        if trunk.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False, **extra)
        else:
            x = block(x, **extra)
    return trunk.norm(x), grid


def _rope(trunk: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """An Eva trunk's axial rotary embedding for a ``gh x gw`` grid (its cached one at the built size)."""
    rope = trunk.rope
    if getattr(trunk, "rope_mixed", False) or not hasattr(rope, "_build_embed_cat"):
        raise DenseFeaturesError(f"dense features support axial rotary positions (PE-Core), not a "
                                 f"{type(rope).__name__}")
    if rope.feat_shape is None or list(grid) == list(rope.feat_shape):
        return rope.get_embed(shape=list(grid))
    # The cached embedding is for the built size; timm's set_input_size rebuilds it from the same bands.
    return rope._build_embed_cat(list(grid), rope.bands)


def _check_pool(pool: nn.Module, attn: str, width: int) -> None:
    if pool.pos_embed is not None or pool.latent_len != 1:
        raise DenseFeaturesError("dense features need an attention-pooling head with one latent query and no "
                                 "position embedding of its own (SigLIP, SigLIP 2, PE-Core)")
    if attn in _NEEDS_QUERIES and pool.q.in_features != width:
        raise DenseFeaturesError(f"attn={attn!r} applies the pooling head's query projection to the tokens, but it "
                                 f"takes {pool.q.in_features} features and the tokens have {width}; use maskclip")


def _heads(t: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    B, N, _ = t.shape
    return t.reshape(B, N, pool.num_heads, pool.head_dim).transpose(1, 2)  # [B, H, N, d]


def _head_tokens(pool: nn.Module, x: torch.Tensor, attn: str) -> torch.Tensor:
    """The pooling head's modified attention over every token: ``proj(A v)``, no MLP. ``x``: ``[B, T, C]``."""
    B, T, C = x.shape
    k, v = pool.kv(x).reshape(B, T, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q = pool.q_norm(_heads(pool.q(x), pool)) if attn in _NEEDS_QUERIES else None
    out = _mix(q, pool.k_norm(k), v, attn, pool.scale)
    return pool.proj(out.transpose(1, 2).reshape(B, T, -1))


def _head_latent(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The latent query's own attention over the tokens, through the output projection, without the MLP: the
    pooled row of the modified head (the CLS-bias input, as the CLS row of the modified block is for CLS towers)."""
    B, T, C = x.shape
    k, v = pool.kv(x).reshape(B, T, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q = pool.q_norm(_heads(pool.q(pool.latent.expand(B, -1, -1)), pool))
    out = F.scaled_dot_product_attention(q, pool.k_norm(k), v, scale=pool.scale)
    return pool.proj(out.transpose(1, 2).reshape(B, 1, -1))[:, 0]


def _after_head(visual: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """What follows the pooling head in timm and open_clip: fc_norm, the classifier head, open_clip's projection."""
    trunk = visual.trunk
    return visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(y))))


def _map_views(visual, images, attn, dense_rows, cls_rows, cls_from):
    trunk = visual.trunk
    pool = trunk.attn_pool
    _check_pool(pool, attn, trunk.embed_dim)
    x, (gh, gw) = _map_trunk(trunk, images)
    tokens = cls = None
    if dense_rows is not None:
        xd = x[dense_rows]
        out = _head_tokens(pool, xd, attn)[:, trunk.num_prefix_tokens:]
        tokens = _after_head(visual, out).reshape(xd.shape[0], gh, gw, -1)
        if cls_from == "surgery" and cls_rows is not None:
            return tokens, _after_head(visual, _head_latent(pool, xd))
    if cls_rows is not None:
        cls = visual.head(trunk.forward_head(x[cls_rows]))  # timm's and open_clip's own pooling: the embedding
    return tokens, cls


# -- the face -------------------------------------------------------------------------------------------------

def encode_views(model: nn.Module, images: torch.Tensor, attn: str = "segearth", *,
                 dense_rows: slice | None = slice(None), cls_rows: slice | None = slice(None),
                 cls_from: str = "ordinary"):
    """Run the shared trunk once over ``images``; dense tokens for ``dense_rows``, global embeddings for ``cls_rows``.

    Lets an objective push all views of a step through one encoder call while paying for the modified and the
    ordinary pooling layer only on the rows that need each. ``None`` skips that output. ``cls_from="surgery"``
    takes the pooled row of the modified layer instead (SegEarth-OV's CLS-bias input: the CLS row of the modified
    block, or the latent query's row of the modified head); it needs ``dense_rows == cls_rows``.
    """
    visual = getattr(model, "visual", model)
    family = tower_family(model)
    if cls_from not in ("ordinary", "surgery"):
        raise ValueError(f"cls_from must be 'ordinary' or 'surgery', got {cls_from!r}")
    if cls_from == "surgery" and cls_rows is not None and cls_rows != dense_rows:
        raise ValueError("cls_from='surgery' needs cls_rows == dense_rows")
    views = _cls_views if family == "cls" else _map_views
    return views(visual, images, attn, dense_rows, cls_rows, cls_from)


def dense_features(model: nn.Module, images: torch.Tensor, attn: str = "segearth", *,
                   with_cls: bool = True, cls_from: str = "ordinary") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense tokens and the global embedding of ``images`` ``[B, 3, H, W]`` (any size the patches tile).

    Returns:
        tokens: ``[B, gh, gw, D]`` from the modified pooling layer, read out into the joint embedding space (not
            normalised);
        cls: ``[B, D]`` the ordinary global image embedding (``encode_image``), or with ``cls_from="surgery"``
            the pooled row of the modified layer (SegEarth-OV's CLS-bias input); None if ``with_cls=False``.
    """
    if attn not in ATTENTION_VARIANTS:
        raise ValueError(f"attn must be one of {ATTENTION_VARIANTS}, got {attn!r}")
    return encode_views(model, images, attn, cls_rows=slice(None) if with_cls else None, cls_from=cls_from)
