"""The batch contract: the one dict that flows from data/ to objectives/.

Every reader and view builder produces it; every objective consumes it. Shapes (B images per rank, K crops,
R regions, L text tokens, S the model's input size):

==================  ==================  ===========================================================================
key                 shape / dtype       meaning
==================  ==================  ===========================================================================
``images``          [B,3,S,S] float     preprocessed global views (the image squashed to S x S)
``texts``           [B,L] long          token ids of each image's caption
``crop_images``     [B,K,3,S,S] float   stage 1: local crops, each resized to S x S
``crop_boxes``      [B,K,4] float       stage 1: each crop's box, x1 y1 x2 y2 normalised to the global view
``region_images``   [B,R,3,S,S] float   stage 2: object crops, each resized to S x S
``region_boxes``    [B,R,4] float       stage 2: object boxes, x1 y1 x2 y2 normalised to the global view
``region_texts``    [B,R,L] long        stage 2: "a satellite image of {category}" (or the object's caption)
``region_labels``   [B,R] long          stage 2: category id; -1 for an object known only by a free-text caption
``region_valid``    [B,R] bool          stage 2: False for padding
==================  ==================  ===========================================================================

Optional bookkeeping keys (``keys``: list of sample identifiers) are ignored by objectives.
"""
from __future__ import annotations

import torch

STAGE1_KEYS = ("images", "texts", "crop_images", "crop_boxes")
STAGE2_KEYS = ("images", "texts", "region_images", "region_boxes", "region_texts", "region_labels", "region_valid")


def check_batch(batch: dict, required: tuple[str, ...]) -> None:
    """Raise a clear error when ``batch`` lacks a key or a shape contradicts the contract."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}; see farslip.data.batch for the contract")
    B = batch["images"].shape[0]
    if batch["texts"].shape[0] != B:
        raise ValueError(f"texts has {batch['texts'].shape[0]} rows for {B} images")
    if "crop_images" in required:
        K = batch["crop_images"].shape[1]
        if tuple(batch["crop_boxes"].shape) != (B, K, 4):
            raise ValueError(f"crop_boxes must be [B,K,4] = {(B, K, 4)}, got {tuple(batch['crop_boxes'].shape)}")
    if "region_images" in required:
        R = batch["region_images"].shape[1]
        for key, shape in (("region_boxes", (B, R, 4)), ("region_labels", (B, R)), ("region_valid", (B, R))):
            if tuple(batch[key].shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(batch[key].shape)}")
        if batch["region_valid"].dtype != torch.bool:
            raise TypeError("region_valid must be a bool tensor")
