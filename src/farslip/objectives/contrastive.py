"""Image-text contrastive losses: CLIP's InfoNCE and SigLIP's sigmoid loss (global), and the multi-positive
region-category loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .distributed import gather_no_grad, gather_with_grad, world


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (open_clip's ClipLoss with gather_with_grad, local_loss=False).

    Features are L2-normalised here; ``logit_scale`` is the model's log-scale parameter.
    """
    from open_clip.loss import ClipLoss

    rank, world_size = world()
    loss = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)
    return loss(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), logit_scale.exp())


def sigmoid_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss over the global batch (open_clip's SigLipLoss): with ``z = t x.y + b``,
    ``-1/B sum_ij log sigmoid(+-z_ij)`` over this rank's ``B`` images and every rank's texts, ``+`` on matching
    pairs. The texts of the other ranks come by neighbour exchange, gradients flowing back to their rank.

    Features are L2-normalised here; ``logit_scale`` is the log-scale parameter ``t'`` (``t = exp(t')``),
    ``logit_bias`` the learned bias ``b``.
    """
    from open_clip.loss import SigLipLoss

    rank, world_size = world()
    loss = SigLipLoss(rank=rank, world_size=world_size)
    return loss(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), logit_scale.exp(),
                logit_bias)


def multi_positive_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                        valid: torch.Tensor, logit_scale: torch.Tensor, multi_positive: bool = True) -> torch.Tensor:
    """Region-category contrast over every valid region of the global batch.

    ``image_features``/``text_features`` ``[N, D]`` (rows for invalid regions are ignored), ``labels`` ``[N]``,
    ``valid`` ``[N]`` bool. With ``multi_positive`` the target of a region is uniform over the regions of its
    label; otherwise only its own text. Cross-entropy in both directions, averaged.
    """
    img = F.normalize(gather_with_grad(image_features), dim=-1)
    txt = F.normalize(gather_with_grad(text_features), dim=-1)
    labels, valid = gather_no_grad(labels), gather_no_grad(valid)
    img, txt, labels = img[valid], txt[valid], labels[valid]
    if labels.numel() == 0:
        return image_features.sum() * 0.0  # keeps the graph connected when a batch has no usable region
    logits = logit_scale.exp() * img @ txt.t()
    if multi_positive:
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
    else:
        targets = torch.eye(labels.numel(), device=logits.device)
    loss_i2t = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t2i = -(targets.t() * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2
