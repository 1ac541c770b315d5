"""Dense-feature probes: how well a model's patch tokens, read on their own, match text and their image's parts.

What FarSLIP stage 1 trains, measured on a segmentation benchmark's images squashed to the model's input (as
training sees them) -- no sliding windows, CLS bias or background rule, so not a segmentation protocol:

* dense patch accuracy (:func:`patch_hits`): is each labelled patch's token nearest to its own class's text?
* crop agreement (:func:`crop_agreement`): do the RoI-pooled tokens of a part of the image agree with the tokens of
  that part encoded on its own (the quantity stage 1's patch-to-patch distillation trains)?
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ..engine import OVSS_TEMPLATES, name_embeddings, query_table
from ..engine.images import model_input_size, normaliser, read_label_array, read_rgb_array
from ..models.dense import dense_features
from ..objectives.distill import roi_pooled
from .ovss import OVSSDataset

# The 2 x 2 grid crop agreement compares: x1 y1 x2 y2, normalised to the image.
QUARTERS = ((0, 0, .5, .5), (.5, 0, 1, .5), (0, .5, .5, 1), (.5, .5, 1, 1))


@torch.no_grad()
def dense_metrics(model, tokenizer, dataset: OVSSDataset, batch: int = 32) -> dict:
    """Both probes over ``dataset``'s images, each squashed to the model's S x S input.

    ``patch_acc`` (%): of the patches whose majority label (at least half the patch) is not background, the share
    whose dense token is nearest (cosine, synonym max, OVSS prompts) to the true class's text; ``patches``: how
    many patches that counted. ``crop_agreement``: mean over images of :func:`crop_agreement` on the 2 x 2 grid.
    Images go through the encoder ``batch`` at a time (the quarters four times that).
    """
    S, norm = model_input_size(model), normaliser(model)
    classes = dataset.classes()
    names, owner = query_table(classes)
    text = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES)
    hits = total = 0
    agreement = []
    pairs = dataset.pairs()
    for start in range(0, len(pairs), batch):
        images, quarters, labels = _squashed_batch(pairs[start:start + batch], S, norm)
        tokens, _ = dense_features(model, images, with_cls=False)
        for tok, label in zip(tokens, labels):
            h, t = patch_hits(tok, label, text, owner, len(classes), dataset.background_index, dataset.ignore_index)
            hits, total = hits + h, total + t
        quarter_tokens, _ = dense_features(model, quarters, with_cls=False)
        agreement += crop_agreement(tokens, quarter_tokens, QUARTERS).tolist()
    return {"patch_acc": round(100 * hits / max(1, total), 2), "patches": total,
            "crop_agreement": round(sum(agreement) / max(1, len(agreement)), 4)}


def _squashed_batch(pairs, S: int, norm) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Each image and each of its quarters resized to S x S and normalised, and each full-size label map."""
    images, quarters, labels = [], [], []
    for image_path, label_path in pairs:
        pixels = torch.from_numpy(read_rgb_array(image_path)).permute(2, 0, 1)
        H, W = pixels.shape[1:]
        images.append(norm(TF.resize(pixels, [S, S], antialias=True)))
        quarters += [norm(TF.resize(pixels[:, int(y1 * H):int(y2 * H), int(x1 * W):int(x2 * W)], [S, S],
                                    antialias=True)) for x1, y1, x2, y2 in QUARTERS]
        labels.append(torch.from_numpy(read_label_array(label_path).astype("int64")))
    return torch.stack(images), torch.stack(quarters), labels


def patch_hits(tokens: torch.Tensor, label: torch.Tensor, text: torch.Tensor, owner: torch.Tensor, n_classes: int,
               background: int, ignore: int) -> tuple[int, int]:
    """(correct, counted) patches of one image's dense tokens ``[gh, gw, D]`` against its label map ``[H, W]``.

    A patch counts when one class other than ``background`` covers at least half of it (``ignore`` pixels count as
    no class); it is correct when its token's best class is that one. A class scores the best cosine of its names
    (``text`` ``[Q, D]`` normalised, ``owner`` ``[Q]`` each name's class); background is never predicted.
    """
    sims = F.normalize(tokens, dim=-1) @ text.T  # [gh, gw, Q]
    scores = sims.new_full(sims.shape[:2] + (n_classes,), -2.0)
    scores.scatter_reduce_(2, owner.view(1, 1, -1).expand_as(sims), sims, reduce="amax")
    scores[..., background] = -2.0  # background is not a thing a patch can look like
    pred = scores.argmax(-1)
    gh, gw = pred.shape
    valid = label != ignore
    onehot = F.one_hot(label.clamp(0, n_classes - 1) * valid, n_classes).permute(2, 0, 1).float()
    share = F.adaptive_avg_pool2d(onehot * valid, (gh, gw))  # [C, gh, gw] fraction of each patch
    best, truth = share.max(0)
    keep = (best >= 0.5) & (truth != background)
    return int((pred[keep] == truth[keep]).sum()), int(keep.sum())


def crop_agreement(tokens: torch.Tensor, crop_tokens: torch.Tensor, boxes) -> torch.Tensor:
    """Per image, the mean over ``boxes`` of the cosine between the box's RoI-pooled dense tokens and the mean token
    of the box encoded on its own.

    ``tokens`` ``[B, gh, gw, D]``: the images'; ``crop_tokens`` ``[B * K, h, w, D]``: each image's K crops in
    ``boxes`` order (x1 y1 x2 y2 normalised to the image). Returns ``[B]``.
    """
    B, K = len(tokens), len(boxes)
    rois = torch.tensor([boxes], dtype=torch.float32, device=tokens.device).expand(B, -1, -1)
    pooled = roi_pooled(tokens, rois)
    return F.cosine_similarity(pooled, crop_tokens.mean(dim=(1, 2)), dim=-1).view(B, K).mean(1)
