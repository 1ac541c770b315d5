"""From logits to a class map: softmax over names, a class scores by its best synonym, the prediction rule."""
from __future__ import annotations

import torch
import torch.nn.functional as F

def class_scores(logits: torch.Tensor, query_to_class: torch.Tensor, num_classes: int, *,
                 out_size: tuple[int, int] | None = None, logit_scale: float = 50.0) -> torch.Tensor:
    """``[C, H, W]`` class probabilities: upsample ``[Q, h, w]`` logits, softmax over names, max over synonyms."""
    if out_size is not None:
        logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
    probs = (logits * logit_scale).softmax(dim=0)
    if probs.shape[0] == num_classes:
        return probs
    out = probs.new_zeros((num_classes,) + probs.shape[1:])
    idx = query_to_class.to(probs.device).view(-1, 1, 1).expand_as(probs)
    return out.scatter_reduce_(0, idx, probs, reduce="amax", include_self=True)


def predict_classes(scores: torch.Tensor, prob_threshold: float = 0.0, background_index: int = 0) -> torch.Tensor:
    """argmax over classes; pixels whose best score is under the threshold become the background class."""
    best, pred = scores.max(dim=0)  # one pass; the index is the first maximal one, as argmax's
    pred[best < prob_threshold] = background_index
    return pred

