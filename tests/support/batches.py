"""Small random batches that follow farslip.data.batch, for objective tests."""
from __future__ import annotations

import torch


def stage1_batch(tokenizer, B=4, K=2, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, K, 2, generator=g) * 0.5
    wh = 0.2 + torch.rand(B, K, 2, generator=g) * 0.3
    captions = [f"a satellite image of {n} storage tanks near a river" for n in range(B)]
    return {
        "images": torch.randn(B, 3, S, S, generator=g),
        "texts": tokenizer(captions),
        "crop_images": torch.randn(B, K, 3, S, S, generator=g),
        "crop_boxes": torch.cat([xy, xy + wh], dim=-1),
    }


def stage2_batch(tokenizer, B=4, R=3, S=32, seed=0, caption_regions=False):
    g = torch.Generator().manual_seed(seed)
    batch = stage1_batch(tokenizer, B=B, K=R, S=S, seed=seed)
    names = ["airplane", "ship", "storage tank"]
    labels = torch.randint(0, 3, (B, R), generator=g)
    valid = torch.ones(B, R, dtype=torch.bool)
    valid[0, -1] = valid[2, -2:] = False  # padding
    labels[~valid] = -1
    texts = [[f"a satellite image of {names[int(c)]}" for c in row] for row in labels.clamp(min=0)]
    if caption_regions:
        labels[1, 0] = labels[3, 1] = -1
        texts[1][0] = texts[3][1] = "a white ship moored at the pier"
    return {
        "images": batch["images"],
        "texts": batch["texts"],
        "region_images": batch["crop_images"],
        "region_boxes": batch["crop_boxes"],
        "region_texts": torch.stack([tokenizer(row) for row in texts]),
        "region_labels": labels,
        "region_valid": valid,
    }
