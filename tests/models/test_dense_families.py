"""Dense features of every tower family (tests/support/towers.py): against timm's own forward and a head-by-head
reference written here, the pooled embedding recovered from the tokens where the tower makes it a known function
of them, any input size, and the large towers of the registry."""
from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch

import farslip
from farslip.models import ATTENTION_VARIANTS
from farslip.models.dense import DenseFeaturesError
from farslip.models.towers import joint_dim, patch_size, tower_family

MAP_FAMILIES = ("siglip2", "pe-core")


def _load(tiny_towers, family, seed=0):
    torch.manual_seed(seed)
    model = farslip.load_model(tiny_towers[family])[0].eval()
    return model


def _size(model) -> int:
    s = model.visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def _reference_map_tokens(model, images, attn):
    """timm's own trunk (forward_features), then the pooling head spelled out head by head: the variant's attention
    over every token with the head's query/key/value projections, the output projection, no MLP; then fc_norm,
    the classifier head and open_clip's projection."""
    trunk = model.visual.trunk
    x = trunk.forward_features(images)
    pool = trunk.attn_pool
    H, d = pool.num_heads, pool.head_dim
    C = x.shape[-1]
    q, kv = pool.q(x), pool.kv(x)
    k, v = kv[..., :C], kv[..., C:]
    out = torch.zeros_like(v)
    for hi in range(H):
        sl = slice(hi * d, (hi + 1) * d)
        for bi in range(x.shape[0]):
            qh, kh, vh = q[bi, :, sl], k[bi, :, sl], v[bi, :, sl]
            sm = lambda a, b: torch.softmax(a @ b.T / math.sqrt(d), dim=-1)  # noqa: E731
            A = {"segearth": sm(qh, qh) + sm(kh, kh) + sm(vh, vh), "sclip": sm(qh, qh) + sm(kh, kh),
                 "clearclip": sm(qh, qh), "maskclip": torch.eye(qh.shape[0]), "vanilla": sm(qh, kh)}[attn]
            out[bi, :, sl] = A @ vh
    y = pool.proj(out)[:, trunk.num_prefix_tokens:]
    y = model.visual.head(trunk.head(trunk.fc_norm(y)))
    g = images.shape[-1] // patch_size(model)
    return y.reshape(x.shape[0], g, g, -1)


@pytest.mark.parametrize("family", MAP_FAMILIES)
@pytest.mark.parametrize("attn", ATTENTION_VARIANTS)
def test_map_tower_tokens_match_reference(tiny_towers, family, attn):
    model = _load(tiny_towers, family)
    images = torch.randn(2, 3, _size(model), _size(model))
    with torch.no_grad():
        tokens, cls = farslip.dense_features(model, images, attn=attn)
        ref = _reference_map_tokens(model, images, attn)
        assert tokens.shape == (2, 4, 4, joint_dim(model))
        torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls, model.encode_image(images), atol=1e-6, rtol=1e-6)


def test_latent_weights_over_maskclip_tokens_give_the_pooled_embedding(tiny_towers):
    """SigLIP 2 (no CLS token, no projection after the head): the head's output is ``y + mlp(norm(y))`` with ``y``
    the readout of the latent's attention-weighted values (the surgery CLS row); the readout is affine, so one
    head's weights over the ``maskclip`` tokens equal the readout of its weighted values."""
    model = _load(tiny_towers, "siglip2")
    trunk, images = model.visual.trunk, torch.randn(3, 3, 32, 32)
    pool = trunk.attn_pool
    with torch.no_grad():
        tokens, surgery_cls = farslip.dense_features(model, images, "maskclip", cls_from="surgery")
        x = trunk.forward_features(images)
        H, d, C = pool.num_heads, pool.head_dim, x.shape[-1]
        q = pool.q(pool.latent).reshape(1, H, d)
        k = pool.kv(x)[..., :C].reshape(3, -1, H, d)
        a = torch.softmax(torch.einsum("hd,bnhd->bhn", q[0], k) / math.sqrt(d), dim=-1)  # [B, H, N]
        # Each head weights its own value channels; the output projection then mixes the heads. With one head's
        # weights for all channels the projection commutes with the sum: check that on head 0's weights.
        y0 = torch.einsum("bn,bnc->bc", a[:, 0], tokens.flatten(1, 2))
        v = pool.kv(x)[..., C:]
        torch.testing.assert_close(y0, pool.proj(torch.einsum("bn,bnc->bc", a[:, 0], v)), atol=1e-5, rtol=1e-5)
        y = pool.proj(torch.einsum("bhn,bnhd->bhd", a, v.reshape(3, -1, H, d)).reshape(3, C))
        torch.testing.assert_close(y, surgery_cls, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y + pool.mlp(pool.norm(y)), model.encode_image(images), atol=1e-5, rtol=1e-5)


def test_uniform_head_without_mlp_pools_the_mean_of_maskclip_tokens(tiny_towers):
    """A tower whose pooled output is a known function of its tokens: a latent query of zero attends uniformly and
    a zero MLP adds nothing, so the image embedding is the mean of the maskclip tokens -- the variant whose
    readout is the pooling head's own path reproduces it."""
    model = _load(tiny_towers, "siglip2")
    pool = model.visual.trunk.attn_pool
    with torch.no_grad():
        pool.q.weight.zero_()
        pool.q.bias.zero_()
        pool.mlp.fc2.weight.zero_()
        pool.mlp.fc2.bias.zero_()
        images = torch.randn(2, 3, 32, 32)
        tokens, cls = farslip.dense_features(model, images, "maskclip")
        torch.testing.assert_close(tokens.mean(dim=(1, 2)), model.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls, model.encode_image(images))
        other, _ = farslip.dense_features(model, images, "segearth")  # three attention terms: not the embedding
        assert not torch.allclose(other.mean(dim=(1, 2)), cls, atol=1e-4)


@pytest.mark.parametrize("family", MAP_FAMILIES)
def test_any_input_size_matches_timm_resized(tiny_towers, family):
    """At another input size the positions are resampled as timm's own ``set_input_size`` does (absolute ones
    by resample_abs_pos_embed, PE's rotary ones rebuilt for the grid): the same embedding and tokens."""
    model = _load(tiny_towers, family)
    resized = copy.deepcopy(model)
    resized.visual.trunk.set_input_size((48, 40))
    images = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        tokens, cls = farslip.dense_features(model, images)
        tokens2, cls2 = farslip.dense_features(resized, images)
        assert tokens.shape == (2, 6, 5, joint_dim(model))
        torch.testing.assert_close(cls, resized.encode_image(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tokens, tokens2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["vit", "vit-l14", *MAP_FAMILIES])
def test_dense_features_train_and_checkpoint(tiny_towers, family):
    """Gradients reach every trunk block through the dense tokens, with and without activation checkpointing."""
    model = _load(tiny_towers, family).train()
    images = torch.randn(2, 3, _size(model), _size(model))
    grads = []
    for ckpt in (False, True):
        model.set_grad_checkpointing(ckpt)
        model.zero_grad()
        tokens, cls = farslip.dense_features(model, images)
        (tokens.square().mean() + cls.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.visual.named_parameters() if p.grad is not None})
    blocks = [n for n in grads[0] if ".blocks." in n or ".resblocks." in n]
    assert blocks and grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_family_facts(tiny_towers):
    facts = {f: (tower_family(m), patch_size(m), joint_dim(m))
             for f in ("vit", "vit-l14", *MAP_FAMILIES) for m in [_load(tiny_towers, f)]}
    assert facts == {"vit": ("cls", 8, 32), "vit-l14": ("cls", 14, 40), "siglip2": ("map", 8, 64),
                     "pe-core": ("map", 8, 48)}


def test_towers_without_dense_features_are_refused_in_one_line():
    model = open_clip.create_model("RN50", device="meta")
    with pytest.raises(DenseFeaturesError, match="ModifiedResNet") as err:
        farslip.dense_features(model, torch.empty(1, 3, 224, 224, device="meta"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch,grid,dim", [("ViT-L-14-336", 32, 768), ("ViT-H-14", 32, 1024),
                                           ("ViT-B-16-SigLIP2", 28, 768), ("ViT-SO400M-14-SigLIP2", 32, 1152),
                                           ("PE-Core-L-14-336", 32, 1024)])
def test_full_size_open_clip_towers_give_dense_features(arch, grid, dim):
    """open_clip's own configs at full size, on the meta device (shapes only, no weights): a 448 px input."""
    with torch.device("meta"):
        model = open_clip.create_model(arch, device="meta")
    tokens, cls = farslip.dense_features(model, torch.empty(1, 3, 448, 448, device="meta"), "segearth",
                                         cls_from="surgery")
    assert tokens.shape == (1, grid, grid, dim) and cls.shape == (1, dim)
