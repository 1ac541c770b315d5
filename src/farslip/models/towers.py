"""Image and text towers by family: which kind of tower a model has, and the few facts about it that the rest of
farslip needs (patch size, width of the joint space, where the text positions live).

Two image tower families give dense features (farslip.models.dense):

* ``cls`` -- open_clip's own ``VisionTransformer`` (OpenAI-style ViT-B/32, B/16, L/14, L/14-336, H/14 and every
  CLIP fine-tuned from one: FarSLIP, RemoteCLIP, GeoRSCLIP, SkyCLIP): a CLS token read out by ``ln_post`` and
  ``proj``;
* ``map`` -- open_clip's timm towers whose image embedding comes from an attention-pooling ("MAP") head, a learned
  latent query over the last tokens (timm ``AttentionPoolLatent``): SigLIP, SigLIP 2 (timm ``VisionTransformer``,
  no CLS token) and Perception Encoder PE-Core (timm ``Eva`` with rotary positions; a CLS token that the head pools
  with the patches).

Everything else (ResNet CLIPs, timm towers pooled by averaging, ConvNeXt) encodes images but has no dense features.
"""
from __future__ import annotations

from torch import nn

from ..core.errors import UsageError

FAMILIES = ("cls", "map")


class DenseFeaturesError(UsageError, TypeError):
    """The model has no dense features of this kind (e.g. a ResNet CLIP such as RemoteCLIP RN50)."""


def _is_cls_vit(visual: nn.Module) -> bool:
    return (hasattr(visual, "conv1") and hasattr(visual, "class_embedding") and hasattr(visual, "transformer")
            and getattr(visual, "attn_pool", None) is None)


def _is_map_tower(visual: nn.Module) -> bool:
    from timm.layers import AttentionPoolLatent

    trunk = getattr(visual, "trunk", None)
    return (trunk is not None and isinstance(getattr(trunk, "attn_pool", None), AttentionPoolLatent)
            and hasattr(trunk, "patch_embed") and hasattr(trunk, "blocks"))


def tower_family(model: nn.Module) -> str:
    """``"cls"`` or ``"map"`` (see the module docstring); a DenseFeaturesError for towers without dense features."""
    visual = getattr(model, "visual", model)
    if _is_cls_vit(visual):
        if not isinstance(visual.transformer.resblocks[-1].attn, nn.MultiheadAttention):
            raise DenseFeaturesError("dense features need the default open_clip attention block "
                                     "(nn.MultiheadAttention)")
        return "cls"
    if _is_map_tower(visual):
        return "map"
    kind = type(getattr(visual, "trunk", visual)).__name__
    raise DenseFeaturesError(f"dense features need a ViT whose embedding is a CLS token (open_clip ViT) or an "
                             f"attention-pooling head (SigLIP, SigLIP 2, PE-Core); this model's image encoder is a "
                             f"{kind} (segmentation and OVSS need a ViT model of one of those kinds; classification "
                             "and search work with any)")


def patch_size(model: nn.Module) -> int:
    """The side of one patch in pixels."""
    visual = getattr(model, "visual", model)
    if tower_family(model) == "cls":
        return int(visual.conv1.kernel_size[0])
    return int(visual.trunk.patch_embed.patch_size[0])


def joint_dim(model: nn.Module) -> int:
    """The width of the joint image-text space (the embeddings' length)."""
    owner = text_tower(model)
    proj = getattr(owner, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    if proj is not None:
        return int(proj.shape[-1])
    raise TypeError(f"cannot tell the embedding width of a {type(model).__name__}")


def text_tower(model: nn.Module) -> nn.Module:
    """The module that holds the text transformer's positions: the CLIP itself, or a CustomTextCLIP's ``text``."""
    text = getattr(model, "text", None)
    return text if isinstance(text, nn.Module) else model


def fsdp_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks every forward calls whole (never reads their weights directly): the units FSDP
    shards and gathers one at a time. The image trunk's blocks -- but a CLS tower's last one, which the dense path
    takes apart (farslip.models.dense) -- and the text tower's blocks."""
    visual = getattr(model, "visual", model)
    family = tower_family(model)
    blocks = list(visual.transformer.resblocks[:-1]) if family == "cls" else list(visual.trunk.blocks)
    text = getattr(text_tower(model), "transformer", None)
    if text is not None and hasattr(text, "resblocks"):
        blocks += list(text.resblocks)
    return blocks
