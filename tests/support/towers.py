"""Tiny towers of every family farslip supports, registered the way users register their own: timm models by
``timm.models.register_model``, open_clip architectures by ``open_clip.add_model_config``.

* ``Test-Tiny-ViT``   -- open_clip ViT (CLS token), patch 8 (conftest.py registers it);
* ``Test-Tiny-ViT-L14`` -- open_clip ViT shaped like the large OpenAI towers: patch 14, heads 20 wide (ViT-H/14's
  80-wide heads are not 64 either), a 56 px input (4 x 4 patches);
* ``Test-Tiny-SigLIP2`` -- timm VisionTransformer without CLS token, attention-pooling (MAP) head, no projection
  (``timm_proj: none``), a learned logit bias and a Hub-style tokenizer (the folder tests/data/tiny_tokenizer/make.py
  writes): open_clip's ViT-B-16-SigLIP2 in small;
* ``Test-Tiny-PE`` -- timm Eva with a CLS token, rotary and absolute positions, pre-norm, a MAP head with fewer
  heads than the trunk and a linear projection to the joint space: open_clip's PE-Core-B-16 in small.

Processes started by a test (torchrun, spawn) call :func:`register_tiny_towers` themselves with the same folder.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import open_clip

from support.fixtures import fixture_module

# A ViT small enough for CPU tests but with every structural feature of ViT-B (CLS token, ln_pre/ln_post,
# projections, multi-head attention). 32 px / patch 8 -> a 4 x 4 grid.
TINY_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

SIGLIP_TRUNK = "farslip_test_siglip2_tiny"
PE_TRUNK = "farslip_test_pe_core_tiny"
FAMILY_ARCHS = {"vit": "Test-Tiny-ViT", "vit-l14": "Test-Tiny-ViT-L14", "siglip2": "Test-Tiny-SigLIP2",
                "pe-core": "Test-Tiny-PE"}


def _timm_kwargs(kwargs: dict) -> dict:
    """What timm.create_model hands an entry point beyond the model's own arguments."""
    return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}


def _register_timm_trunks() -> None:
    import timm
    from timm.layers import LayerNorm
    from timm.models import register_model
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if timm.models.is_model(SIGLIP_TRUNK):
        return

    def farslip_test_siglip2_tiny(pretrained: bool = False, **kwargs):
        args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, class_token=False,
                    global_pool="map")
        return VisionTransformer(**{**args, **_timm_kwargs(kwargs)})

    def farslip_test_pe_core_tiny(pretrained: bool = False, **kwargs):
        args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, global_pool="map",
                    attn_type="rope", use_pre_transformer_norm=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
                    rope_grid_offset=1.0, rope_grid_indexing="xy", attn_pool_num_heads=2, attn_pool_mlp_ratio=4.0,
                    norm_layer=partial(LayerNorm, eps=1e-5))
        return Eva(**{**args, **_timm_kwargs(kwargs)})

    register_model(farslip_test_siglip2_tiny)
    register_model(farslip_test_pe_core_tiny)


def tower_configs(tokenizer_dir: Path) -> dict[str, dict]:
    return {
        "Test-Tiny-ViT-L14": {
            "embed_dim": 40, "quick_gelu": True,
            "vision_cfg": {"image_size": 56, "layers": 2, "width": 60, "head_width": 20, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        "Test-Tiny-SigLIP2": {
            "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": {"image_size": 32, "timm_model_name": SIGLIP_TRUNK, "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {"context_length": 16, "vocab_size": 512, "hf_tokenizer_name": str(tokenizer_dir),
                         "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2, "layers": 2,
                         "no_causal_mask": True, "proj_bias": True, "pool_type": "last",
                         "norm_kwargs": {"eps": 1e-6}, "act_kwargs": {"approximate": "tanh"}},
        },
        "Test-Tiny-PE": {
            "embed_dim": 48, "custom_text": True,
            "vision_cfg": {"image_size": 32, "timm_model_name": PE_TRUNK, "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": None},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
    }


def register_tiny_towers(folder: str | Path) -> dict[str, str]:
    """Register every tiny tower (configs and the tokenizer written under ``folder``); returns family -> arch."""
    folder = Path(folder)
    _register_timm_trunks()
    tokenizer_dir = folder / "tiny_tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        fixture_module("tiny_tokenizer").make(tokenizer_dir)
    configs = folder / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for name, cfg in {**tower_configs(tokenizer_dir), "Test-Tiny-ViT": TINY_CFG}.items():
        path = configs / f"{name}.json"
        if not path.exists():  # spawned processes find them written (and must not read one half-rewritten)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cfg))
            os.replace(tmp, path)
    open_clip.add_model_config(configs)
    return dict(FAMILY_ARCHS)
