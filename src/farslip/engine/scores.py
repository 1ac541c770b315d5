"""The scoring rules, in one place: a scene's classes (100 x cosine, softmax, best synonym) and a class map (softmax
over names at every pixel, best synonym, the prediction rule)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def scene_logits(image_features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``[N, Q]`` zero-shot logits: 100 x the cosine between each image embedding and each name embedding
    (``text`` normalised, as :func:`~farslip.engine.name_embeddings` gives it), in the image features' dtype as
    SkyScript's ``zero_shot_eval`` computes them."""
    feats = F.normalize(image_features, dim=-1)
    return 100.0 * feats @ text.t().to(feats.dtype)


def scene_probabilities(image_features: torch.Tensor, text: torch.Tensor,
                        query_to_class: torch.Tensor | None = None, num_classes: int | None = None) -> torch.Tensor:
    """``[N, C]`` class probabilities of each image: softmax of :func:`scene_logits` over all names, a class
    scoring by its best synonym (``query_to_class``: each name's class; None: one name per class)."""
    probs = scene_logits(image_features, text).float().softmax(dim=-1)
    if query_to_class is None:
        return probs
    out = probs.new_zeros(probs.shape[0], num_classes or int(query_to_class.max()) + 1)
    idx = query_to_class.to(probs.device).expand(probs.shape[0], -1)
    return out.scatter_reduce_(1, idx, probs, reduce="amax", include_self=True)


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

