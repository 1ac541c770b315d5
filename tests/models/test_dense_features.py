"""Dense features against a slow, obviously-correct reference written here."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import farslip
from farslip.models import ATTENTION_VARIANTS


def _reference_dense(model, images, attn):
    """Token by token, head by head: the spec's section 3 spelled out with loops."""
    v = model.visual
    x = v.conv1(images)
    B, C, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(B, 1, C), x], dim=1)
    pos = v.positional_embedding
    g = math.isqrt(pos.shape[0] - 1)
    if (gh, gw) != (g, g):
        grid = pos[1:].reshape(1, g, g, C).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / g, (gw + 0.1) / g), mode="bicubic")
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, C)])
    x = v.ln_pre(x + pos)
    for blk in v.transformer.resblocks[:-1]:
        x = blk(x)
    blk = v.transformer.resblocks[-1]
    h = blk.ln_1(x)
    W, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    q, k, val = h @ W[:C].T + b[:C], h @ W[C:2 * C].T + b[C:2 * C], h @ W[2 * C:].T + b[2 * C:]
    H = blk.attn.num_heads
    d = C // H
    out = torch.zeros_like(h)
    for bi in range(B):
        for hi in range(H):
            sl = slice(hi * d, (hi + 1) * d)
            qh, kh, vh = q[bi, :, sl], k[bi, :, sl], val[bi, :, sl]
            sm = lambda a, c: torch.softmax(a @ c.T / math.sqrt(d), dim=-1)  # noqa: E731
            A = {
                "segearth": sm(qh, qh) + sm(kh, kh) + sm(vh, vh),
                "sclip": sm(qh, qh) + sm(kh, kh),
                "clearclip": sm(qh, qh),
                "maskclip": torch.eye(qh.shape[0]),
                "vanilla": sm(qh, kh),
            }[attn]
            out[bi, :, sl] = A @ vh
    out = blk.attn.out_proj(out)
    tokens = v.ln_post(out)[:, 1:] @ v.proj
    return tokens.reshape(B, gh, gw, -1)


@pytest.mark.parametrize("attn", ATTENTION_VARIANTS)
def test_dense_matches_reference(tiny_model, attn):
    model, _, _ = tiny_model
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, cls = farslip.dense_features(model, images, attn=attn)
        ref = _reference_dense(model, images, attn)
        assert tokens.shape == (2, 4, 4, 32)
        assert torch.allclose(tokens, ref, atol=1e-5, rtol=1e-5)
        assert torch.allclose(cls, model.encode_image(images), atol=1e-6)


def test_other_input_sizes_interpolate_position_embedding(tiny_model):
    model, _, _ = tiny_model
    images = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        tokens, _ = farslip.dense_features(model, images)
        assert tokens.shape == (1, 6, 5, 32)
        assert torch.allclose(tokens, _reference_dense(model, images, "segearth"), atol=1e-5, rtol=1e-5)


def test_surgery_cls_is_the_cls_row_of_the_modified_block(tiny_model):
    model, _, _ = tiny_model
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, cls = farslip.dense_features(model, images, cls_from="surgery")
        tokens2, ordinary = farslip.dense_features(model, images)
    assert torch.equal(tokens, tokens2)
    assert not torch.allclose(cls, ordinary)


def test_unknown_variant_is_rejected(tiny_model):
    model, _, _ = tiny_model
    with pytest.raises(ValueError, match="segearth"):
        farslip.dense_features(model, torch.randn(1, 3, 32, 32), attn="bogus")


@pytest.mark.parametrize("attn", ATTENTION_VARIANTS)
def test_large_openai_style_tower_matches_reference(tiny_towers, attn):
    """Patch 14 and heads 20 wide (the OpenAI L/14 and H/14 shapes, tests/support/towers.py), at a size it was not
    built for: 5 x 6 patches where it was built for 4 x 4."""
    torch.manual_seed(0)
    model = farslip.load_model(tiny_towers["vit-l14"])[0].eval()
    images = torch.randn(2, 3, 70, 84)
    with torch.no_grad():
        tokens, _ = farslip.dense_features(model, images, attn=attn)
        assert tokens.shape == (2, 5, 6, 40)
        torch.testing.assert_close(tokens, _reference_dense(model, images, attn), atol=1e-5, rtol=1e-5)
