"""Training-free open-vocabulary semantic segmentation with SegEarth-OV's protocol (spec section 7).

For each image:

1. resize to fit ``scale x scale`` keeping the ratio (mmcv ``imrescale``: factor ``scale / long side``, bilinear,
   no antialiasing), normalise with CLIP's mean/std on the 0..255 scale;
2. slide ``crop`` windows with ``stride`` (SegEarth-OV's ``forward_slide`` arithmetic: the last window is shifted
   back inside the image; windows that are not a multiple of the patch size are zero-padded around the centre);
   every window goes through the encoder -- windows of one image and of several images are batched;
3. per window: dense tokens (last-layer surgery, ``attn`` variant) and the CLS row, both L2-normalised;
   cosine with each name's text embedding (OpenAI's 80 ImageNet templates, mean of normalised embeddings,
   renormalised), plus ``cls_lambda x`` the CLS cosine (global-bias alleviation, -0.3), upsampled bilinearly to
   the window;
4. overlapping windows averaged (sum / count), upsampled bilinearly to the ORIGINAL image size;
5. ``softmax(logit_scale x logits)`` over all names; a class's score is the max over its synonyms; argmax; pixels
   whose top score is under the dataset's threshold get its background class;
6. intersection / union accumulated over the dataset (ignore label, optional ``reduce_zero_label``) -> mIoU.

SegEarth-OV's optional learned upsampler (SimFeatUp) is not used.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..models import ATTENTION_VARIANTS, dense_features
from .common import (Amp, EvalResult, Template, TextEmbeddingCache, autocast_for, make_loader, model_device,
                     model_dtype, name_embeddings, progress, split_bad)
from .io import BadRecord, ErrorPolicy, EvalDataError, read_label_array, read_rgb_array, read_synonym_file
from .metrics import SegmentationMeter, reduce_zero_label

#: SegEarth-OV's SegDataPreProcessor: CLIP mean/std on the 0..255 scale (RGB).
PIXEL_MEAN = (122.771, 116.746, 104.094)
PIXEL_STD = (68.501, 66.632, 70.323)
#: OpenAI's 80 ImageNet prompt templates (the same list and order SegEarth-OV uses).
OVSS_TEMPLATES: tuple[Template, ...] = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)


# ----------------------------------------------------------------------------------------------------------------
# Dataset description

@dataclass
class OVSSDataset:
    """One segmentation benchmark: where its images and label maps are and how to score it.

    Attributes:
        img_dir, ann_dir: folders of images and label maps (searched recursively, sorted; a label map has the
            image's relative path with ``img_suffix`` replaced by ``ann_suffix``, as mmseg pairs them).
        class_file: SegEarth-OV class-name file (one class a line in label order, synonyms separated by commas),
            or the same as a list of synonym lists.
        prob_threshold: pixels whose best class score is under it get ``background_index``.
        background_index: the background class.
        ignore_index: label value left out of the metric.
        reduce_zero_label: label 0 means "no data" (-> ignored) and every other class moves down by one.
    """
    img_dir: str
    ann_dir: str
    class_file: str | list
    name: str = "custom"
    img_suffix: str = ".png"
    ann_suffix: str = ".png"
    prob_threshold: float = 0.0
    background_index: int = 0
    ignore_index: int = 255
    reduce_zero_label: bool = False

    def classes(self) -> list[list[str]]:
        """Synonym lists in label order."""
        if isinstance(self.class_file, (list, tuple)):
            return [[n] if isinstance(n, str) else list(n) for n in self.class_file]
        return read_synonym_file(self.class_file)

    def class_names(self) -> list[str]:
        """One display name per class (its first synonym)."""
        return [syn[0] for syn in self.classes()]

    def missing(self) -> list[str]:
        """What is not where it should be (empty when the dataset looks usable)."""
        out = []
        for label, p in (("image folder", self.img_dir), ("label folder", self.ann_dir)):
            if not Path(p).is_dir():
                out.append(f"{label} {p}")
        if not isinstance(self.class_file, (list, tuple)) and not Path(self.class_file).is_file():
            out.append(f"class-name file {self.class_file}")
        return out

    def pairs(self) -> list[tuple[str, str]]:
        """``(image, label map)`` paths, sorted by image path."""
        if problems := self.missing():
            raise EvalDataError(f"OVSS dataset {self.name!r}: missing " + "; ".join(problems))
        root = Path(self.img_dir)
        images = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root, followlinks=True)
                        for f in files if f.endswith(self.img_suffix))
        if not images:
            raise EvalDataError(f"OVSS dataset {self.name!r}: no '*{self.img_suffix}' images under {root}")
        return [(str(root / rel), str(Path(self.ann_dir) / (rel[:-len(self.img_suffix)] + self.ann_suffix)))
                for rel in images]

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Loading and resizing

def rescaled_size(h: int, w: int, scale: int | tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale_size``: the largest size that fits ``scale`` keeping the ratio; ``(new_h, new_w)``."""
    long_edge, short_edge = (max(scale), min(scale)) if isinstance(scale, (tuple, list)) else (scale, scale)
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def prepare_image(rgb: torch.Tensor, scale: int | None) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> resized (bilinear, half-pixel centres, no antialias, rounded to 0..255 as cv2 does)
    and normalised ``float32 [3, h, w]``."""
    x = rgb.permute(2, 0, 1).float()[None]
    if scale:
        size = rescaled_size(x.shape[-2], x.shape[-1], scale)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
            x = x.round_().clamp_(0, 255)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


class SegmentationSamples(Dataset):
    """Image (resized, normalised) + label map (original size) for each pair; unreadable ones -> BadRecord."""

    def __init__(self, pairs: list[tuple[str, str]], dataset: OVSSDataset, scale: int | None):
        self.pairs, self.ds, self.scale = pairs, dataset, scale

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        img_path, ann_path = self.pairs[i]
        try:
            rgb = torch.from_numpy(read_rgb_array(img_path))
        except Exception as exc:  # noqa: BLE001
            return BadRecord(i, f"{self.ds.name}: cannot read image {img_path!r}: {type(exc).__name__}: {exc}")
        if not Path(ann_path).is_file():
            return BadRecord(i, f"{self.ds.name}: no label map {ann_path!r} for image {img_path!r}")
        try:
            label = torch.from_numpy(read_label_array(ann_path).astype(np.int32))
        except Exception as exc:  # noqa: BLE001
            return BadRecord(i, f"{self.ds.name}: cannot read label map {ann_path!r}: {type(exc).__name__}: {exc}")
        if tuple(label.shape) != tuple(rgb.shape[:2]):
            return BadRecord(i, f"{self.ds.name}: label map {ann_path!r} is {tuple(label.shape)} but image "
                                f"{img_path!r} is {tuple(rgb.shape[:2])} (rows, columns)")
        if self.ds.reduce_zero_label:
            label = reduce_zero_label(label, self.ds.ignore_index)
        return {"image": prepare_image(rgb, self.scale), "label": label, "index": i,
                "ori_size": tuple(rgb.shape[:2]), "path": img_path}


def _collate(batch):
    return batch


# ----------------------------------------------------------------------------------------------------------------
# Sliding windows

def window_boxes(h: int, w: int, crop: int | tuple[int, int] = 224,
                 stride: int | tuple[int, int] = 112) -> list[tuple[int, int, int, int]]:
    """SegEarth-OV's (mmseg's) sliding windows ``(y1, y2, x1, x2)`` over an ``h x w`` image, row by row.

    ``max(h - crop + stride - 1, 0) // stride + 1`` rows of windows (same for columns); the last one is shifted
    back to end at the border; an image smaller than a window gives one window of the image's size. The grid is
    the product of one span list per axis (:func:`window_spans`).
    """
    h_crop, w_crop = (crop, crop) if isinstance(crop, int) else crop
    h_stride, w_stride = (stride, stride) if isinstance(stride, int) else stride
    return [(y1, y2, x1, x2) for y1, y2 in window_spans(h, h_crop, h_stride)
            for x1, x2 in window_spans(w, w_crop, w_stride)]


def window_spans(n: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each sliding window along one axis of length ``n`` (see :func:`window_boxes`)."""
    spans = []
    for i in range(max(n - crop + stride - 1, 0) // stride + 1):
        end = min(i * stride + crop, n)
        spans.append((max(end - crop, 0), end))
    return spans


def pad_to_patch(h: int, w: int, patch: int) -> tuple[int, int, int, int]:
    """SegEarth-OV's ``compute_padsize``: centred ``(left, right, top, bottom)`` padding to a patch multiple."""
    l = r = t = b = 0
    if w % patch:
        lr = patch - w % patch
        l, r = lr // 2, lr - lr // 2
    if h % patch:
        tb = patch - h % patch
        t, b = tb // 2, tb - tb // 2
    return l, r, t, b


def _patch_size(model: nn.Module) -> int:
    ps = getattr(model.visual, "patch_size", None)
    if isinstance(ps, (tuple, list)):
        return int(ps[0])
    if ps is None:
        return int(model.visual.conv1.kernel_size[0])
    return int(ps)


@torch.no_grad()
def window_logits(model: nn.Module, windows: torch.Tensor, query_features: torch.Tensor, *,
                  attn: str = "segearth", cls_lambda: float = -0.3, cls_from: str = "surgery",
                  amp: Amp = None) -> torch.Tensor:
    """Cosine logits ``[B, Q, h, w]`` of a batch of (padded) windows ``[B, 3, h, w]``, at window resolution.

    ``cosine(token, name) + cls_lambda * cosine(cls, name)`` per patch, upsampled bilinearly from the patch grid.
    ``cls_from="surgery"`` takes the CLS row of the modified last block (SegEarth-OV); ``"ordinary"`` the usual
    global embedding.
    """
    with autocast_for(model, amp):
        tokens, cls = dense_features(model, windows.to(model_dtype(model)), attn, with_cls=cls_lambda != 0,
                                     cls_from=cls_from if cls_lambda != 0 else "ordinary")
    q = query_features.float()
    tokens = tokens.float()
    logits = (tokens / tokens.norm(dim=-1, keepdim=True)) @ q.t()  # [B, gh, gw, Q]
    if cls_lambda != 0:
        cls = cls.float()
        logits = logits + cls_lambda * ((cls / cls.norm(dim=-1, keepdim=True)) @ q.t())[:, None, None, :]
    logits = logits.permute(0, 3, 1, 2)
    return F.interpolate(logits, size=windows.shape[-2:], mode="bilinear", align_corners=False)


#: Encoder rows (windows x tokens) per call that CPU kernels handle best: a ViT-B/16 window is 197 rows, so about
#: five windows a call; bigger batches spill the caches (measured in benchmarks/, docs/performance.md).
CPU_ROWS_PER_CALL = 1024
#: Windows per encoder call on accelerators (where batching is what fills the device).
DEVICE_WINDOW_BATCH = 64


def default_window_batch(model: nn.Module, crop: int = 224) -> int:
    """Windows per encoder call: 64 on an accelerator; on the CPU about ``CPU_ROWS_PER_CALL`` token rows."""
    if model_device(model).type != "cpu":
        return DEVICE_WINDOW_BATCH
    tokens = (crop // _patch_size(model)) ** 2 + 1
    return max(1, CPU_ROWS_PER_CALL // tokens)


@torch.no_grad()
def sliding_window_logits(model: nn.Module, images: Sequence[torch.Tensor], query_features: torch.Tensor, *,
                          crop: int = 224, stride: int = 112, attn: str = "segearth", cls_lambda: float = -0.3,
                          cls_from: str = "surgery", window_batch_size: int | None = None,
                          amp: Amp = None, boxes: Sequence[Sequence[tuple[int, int, int, int]]] | None = None
                          ) -> list[torch.Tensor]:
    """Window-averaged cosine logits ``[Q, H, W]`` for each image ``[3, H, W]`` (already resized/normalised).

    All windows of all ``images`` are grouped by shape and pushed through the encoder ``window_batch_size`` at a
    time (default :func:`default_window_batch`); results equal running SegEarth-OV's window loop one window at a
    time. ``boxes`` (one list per image) replaces the default grid ``window_boxes(H, W, crop, stride)``: tiled
    inference passes the windows of the whole raster that fall in a tile; every pixel must be covered.
    """
    device = model_device(model)
    window_batch_size = window_batch_size or default_window_batch(model, crop)
    patch = _patch_size(model)
    Q = query_features.shape[0]
    jobs: dict[tuple[int, int], list] = {}
    sums, counts = [], []
    for n, img in enumerate(images):
        img = img.to(device)
        H, W = img.shape[-2:]
        sums.append(torch.zeros(Q, H, W, device=device))
        counts.append(torch.zeros(1, H, W, device=device))
        for (y1, y2, x1, x2) in (boxes[n] if boxes is not None else window_boxes(H, W, crop, stride)):
            pad = pad_to_patch(y2 - y1, x2 - x1, patch)
            shape = (y2 - y1 + pad[2] + pad[3], x2 - x1 + pad[0] + pad[1])
            jobs.setdefault(shape, []).append((n, img, (y1, y2, x1, x2), pad))
    for shape, items in jobs.items():
        for start in range(0, len(items), window_batch_size):
            chunk = items[start:start + window_batch_size]
            crops = []
            for _, img, (y1, y2, x1, x2), pad in chunk:
                c = img[:, y1:y2, x1:x2]
                crops.append(F.pad(c, pad) if any(pad) else c)
            logits = window_logits(model, torch.stack(crops), query_features, attn=attn, cls_lambda=cls_lambda,
                                   cls_from=cls_from, amp=amp)
            for (n, _, (y1, y2, x1, x2), (l, r, t, b)), lg in zip(chunk, logits):
                sums[n][:, y1:y2, x1:x2] += lg[:, t:t + (y2 - y1), l:l + (x2 - x1)]
                counts[n][:, y1:y2, x1:x2] += 1
    return [s / c for s, c in zip(sums, counts)]


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


# ----------------------------------------------------------------------------------------------------------------
# The evaluation

def query_table(classes: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """Flatten synonym lists: all names in order, and each name's class index."""
    names = [n for syn in classes for n in syn]
    owner = torch.tensor([c for c, syn in enumerate(classes) for _ in syn], dtype=torch.long)
    return names, owner


@torch.no_grad()
def ovss(model: nn.Module, tokenizer, dataset: OVSSDataset, *, attn: str = "segearth", scale: int | None = 448,
         crop: int = 224, stride: int = 112, logit_scale: float = 50.0, cls_lambda: float = -0.3,
         cls_from: str = "surgery", templates: Sequence[Template] | None = None, batch_size: int = 4,
         window_batch_size: int | None = None, num_workers: int | None = None, amp: Amp = None,
         on_error: str = "raise", limit: int | None = None, overlays: int = 0, overlay_dir=None,
         text_cache: TextEmbeddingCache | None = None, show_progress: bool = True,
         desc: str | None = None,
         device=None) -> EvalResult:
    """Open-vocabulary segmentation mIoU of ``model`` on ``dataset`` with SegEarth-OV's protocol.

    Args:
        attn: last-block attention variant (``segearth``, ``sclip``, ``clearclip``, ``maskclip``, ``vanilla``).
        scale: images are resized to fit ``scale x scale`` keeping their ratio (None: no resize).
        crop, stride: sliding window size and step on the resized image.
        logit_scale: temperature of the softmax over names (50).
        cls_lambda: weight of the CLS-token logits added to every patch (-0.3); 0 turns it off.
        cls_from: ``"surgery"`` (SegEarth-OV: the CLS row of the modified last block) or ``"ordinary"``.
        templates: prompt templates; default OpenAI's 80 ImageNet templates.
        batch_size: images loaded per step; their windows share encoder batches of ``window_batch_size``
            (default: 64 on an accelerator, about 1024 token rows -- 5 ViT-B/16 windows -- on the CPU).
        overlays, overlay_dir: write ``image | prediction | ground truth`` PNGs of the first ``overlays`` images.
        device: move the model there first (default: use it where it is).
        amp: None = the official precision (fp16 autocast on CUDA, fp32 on CPU); ``"bf16"``: bfloat16 autocast on
            any device, about 3x faster on a CPU with avx512_bf16/AMX, not the paper's protocol (a few pixels in a
            thousand change class); ``False``: no autocast.
        on_error: ``"raise"`` at the first unreadable image or label map, or ``"skip"`` and count it.
        limit: evaluate only the first ``limit`` images.

    Returns:
        ``{"mIoU", "aAcc" (pixel accuracy), "mAcc"}`` in percent (2 decimals) and per-class ``"IoU"``/``"Acc"``
        dicts (None for a class absent from both prediction and ground truth); ``.info`` has counts and timing.
    """
    if attn not in ATTENTION_VARIANTS:
        raise ValueError(f"attn must be one of {ATTENTION_VARIANTS}, got {attn!r}")
    if isinstance(dataset, dict):
        dataset = OVSSDataset(**dataset)
    if not isinstance(dataset, OVSSDataset):
        raise TypeError("dataset must be an OVSSDataset (for a registered benchmark: "
                        "farslip.eval.OVSS['LoveDA'].dataset(data_root))")
    t0 = time.time()
    if device is not None:
        model.to(device)
    errors = ErrorPolicy(on_error)
    classes = dataset.classes()
    names, owner = query_table(classes)
    class_names = [syn[0] for syn in classes]
    if not 0 <= dataset.background_index < len(classes):
        raise EvalDataError(f"OVSS dataset {dataset.name!r}: background index {dataset.background_index} is not a "
                            f"class (0..{len(classes) - 1})")
    pairs = dataset.pairs()
    if limit is not None:
        pairs = pairs[:limit]
    model.eval()
    device = model_device(model)
    queries = name_embeddings(model, tokenizer, names, templates or OVSS_TEMPLATES, amp=amp, cache=text_cache)
    meter = SegmentationMeter(len(classes), class_names, dataset.ignore_index)
    loader = make_loader(SegmentationSamples(pairs, dataset, scale), batch_size, num_workers, _collate)
    written = []
    for batch in progress(loader, desc=desc or f"ovss {dataset.name}", enabled=show_progress, unit="batch"):
        samples, bad = split_bad(batch)
        for b in bad:
            errors(b.error)
        if not samples:
            continue
        logits = sliding_window_logits(model, [s["image"] for s in samples], queries, crop=crop, stride=stride,
                                       attn=attn, cls_lambda=cls_lambda, cls_from=cls_from,
                                       window_batch_size=window_batch_size, amp=amp)
        for s, lg in zip(samples, logits):
            scores = class_scores(lg, owner, len(classes), out_size=s["ori_size"], logit_scale=logit_scale)
            pred = predict_classes(scores, dataset.prob_threshold, dataset.background_index)
            label = s["label"].to(device)
            meter.update(pred, label)
            if overlay_dir is not None and len(written) < overlays:
                from .overlays import save_overlay

                out = Path(overlay_dir) / f"{Path(s['path']).stem}.png"
                save_overlay(out, s["path"], pred.cpu(), s["label"], len(classes), dataset.ignore_index,
                             class_names=class_names)
                written.append(str(out))
    if meter.images == 0:
        raise EvalDataError(f"OVSS dataset {dataset.name!r}: no image could be evaluated ({errors.count} skipped)")
    res = EvalResult(meter.compute())
    res.info = {"images": meter.images, "classes": len(classes), "names": len(names), "overlays": written,
                "seconds": round(time.time() - t0, 2), **errors.summary()}
    return res
