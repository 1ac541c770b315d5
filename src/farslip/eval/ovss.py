"""Training-free open-vocabulary semantic segmentation under a named protocol (spec section 7).

The protocol (``farslip``: RS-OVSS, the FarSLIP paper's table, the default; ``segearth``: SegEarth-OV's) holds
every value that changes a number (``farslip.engine.protocols``). For each image:

1. read and resize as mmcv does (OpenCV ``imdecode``; ``cv2.resize`` bilinear to fit ``scale x scale`` keeping the
   ratio), normalise with CLIP's mean/std on the 0..255 scale;
2. slide ``crop`` windows with ``stride`` (the official ``forward_slide`` arithmetic: the last window is shifted
   back inside the image; windows that are not a multiple of the patch size are zero-padded around the centre);
   windows of one image and of several images are batched through the encoder; with ``window_to_model_size``
   (RS-OVSS) a window whose padded size is not the model's input size is resized to it first;
3. per window: dense tokens (last-layer surgery, ``attn`` variant; optionally upsampled by SimFeatUp) and the CLS
   row, both L2-normalised; cosine with each name's text embedding (OpenAI's 80 ImageNet templates, mean of
   normalised embeddings, renormalised), plus ``cls_lambda x`` the CLS cosine, upsampled bilinearly to the window;
4. overlapping windows averaged (sum / count), upsampled bilinearly to the ORIGINAL image size;
5. ``softmax(logit_scale x logits)`` over all names; a class's score is the max over its synonyms; argmax; pixels
   whose top score is under the protocol's threshold get the background class;
6. intersection / union accumulated over the dataset (ignore label, optional ``reduce_zero_label``) -> mIoU.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.distributed import batch_shard, is_main
from ..core.problems import Problem
from ..engine import (OVSS_TEMPLATES, Template, TextEmbeddingCache, class_scores, name_embeddings, predict_classes,
                      prepare_image, query_table, sliding_window_logits)
from ..engine.images import open_image, read_label_array, read_rgb_array, read_rgb_like_mmcv
from ..engine.protocols import OVSSProtocol, get_protocol, is_sam3
from ..engine.runtime import protocol_runtime
from ..models.precision import Amp, model_device
from . import distributed
from .common import EvalResult, make_loader, progress, split_bad
from .io import ErrorPolicy, EvalDataError, read_synonym_file
from .metrics import SegmentationMeter, reduce_zero_label


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
# Loading

class SegmentationSamples(Dataset):
    """Image (resized, normalised) + label map (original size) for each pair; unreadable ones -> a Problem.

    ``pil``: the image as SegEarth-OV3 reads it instead (``Image.open(path).convert("RGB")``), uint8 ``[3, H, W]``
    at its own size (the SAM 3 protocols)."""

    def __init__(self, pairs: list[tuple[str, str]], dataset: OVSSDataset, scale: int | None, pil: bool = False):
        self.pairs, self.ds, self.scale, self.pil = pairs, dataset, scale, pil

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        img_path, ann_path = self.pairs[i]
        try:
            rgb = _read_pil_rgb(img_path) if self.pil else read_rgb_like_mmcv(img_path)  # as the official code
            rgb = torch.from_numpy(rgb if rgb is not None else read_rgb_array(img_path))
        except Exception as exc:  # noqa: BLE001
            return Problem("bad-image", img_path, f"{self.ds.name}: cannot read image: {type(exc).__name__}: {exc}")
        if not Path(ann_path).is_file():
            return Problem("missing-label", ann_path, f"{self.ds.name}: no label map for image {img_path!r}")
        try:
            label = torch.from_numpy(read_label_array(ann_path).astype(np.int32))
        except Exception as exc:  # noqa: BLE001
            return Problem("bad-label", ann_path, f"{self.ds.name}: cannot read label map: {type(exc).__name__}: {exc}")
        if tuple(label.shape) != tuple(rgb.shape[:2]):
            return Problem("bad-label", ann_path, f"{self.ds.name}: label map is {tuple(label.shape)} but image "
                                f"{img_path!r} is {tuple(rgb.shape[:2])} (rows, columns)")
        if self.ds.reduce_zero_label:
            label = reduce_zero_label(label, self.ds.ignore_index)
        image = rgb.permute(2, 0, 1).contiguous() if self.pil else prepare_image(rgb, self.scale)
        return {"image": image, "label": label, "index": i, "ori_size": tuple(rgb.shape[:2]), "path": img_path}


def _read_pil_rgb(path: str) -> np.ndarray | None:
    """``Image.open(path).convert("RGB")`` as uint8 ``[H, W, 3]``; None when PIL cannot decode it."""
    try:
        return np.array(open_image(path).convert("RGB"))
    except Exception:  # noqa: BLE001 -- the caller falls back to its own reader (rasterio for TIFF flavours)
        return None


def _collate(batch):
    return batch


# ----------------------------------------------------------------------------------------------------------------
# The evaluation

@torch.no_grad()
def ovss(model: nn.Module, tokenizer, dataset: OVSSDataset, *, protocol: str | OVSSProtocol | None = None,
         attn: str | None = None, scale: int | None = None, crop: int | None = None, stride: int | None = None,
         logit_scale: float | None = None, cls_lambda: float | None = None, cls_from: str | None = None,
         threshold: float | None = None, background_index: int | None = None,
         window_to_model_size: bool | None = None, simfeatup: str | None = None, half_model: str | None = None,
         templates: Sequence[Template] | None = None, batch_size: int = 4, window_batch_size: int | None = None,
         num_workers: int | None = None, amp: Amp = None, on_error: str = "raise", limit: int | None = None,
         overlays: int = 0, overlay_dir=None, text_cache: TextEmbeddingCache | None = None,
         show_progress: bool = True, desc: str | None = None, device=None, sam3=None) -> EvalResult:
    """Open-vocabulary segmentation mIoU of ``model`` on ``dataset`` under an OVSS protocol.

    Args:
        protocol: ``"farslip"`` (default: NJU-LHRS/RS-OVSS, the FarSLIP paper's table), ``"segearth"``
            (SegEarth-OV's) or an :class:`~farslip.engine.protocols.OVSSProtocol`. Every value is documented
            there; the arguments below override it when given (None: the protocol's). A SAM 3 protocol
            (``"segearth-ov3"``, the fusions; a :class:`~farslip.engine.protocols.Sam3Protocol`) runs ``sam3``
            (:func:`farslip.eval.sam3.sam3_ovss`), ``model``/``tokenizer`` being the fusions' CLIP (or None):
        attn: last-block attention variant (``segearth``, ``sclip``, ``clearclip``, ``maskclip``, ``vanilla``).
        scale: images are resized (OpenCV bilinear) to fit ``scale x scale`` keeping their ratio (0: no resize).
        crop, stride: sliding window size and step on the resized image.
        logit_scale: temperature of the softmax over names.
        cls_lambda: weight of the CLS-token logits added to every patch; 0 turns it off.
        cls_from: ``"surgery"`` (the CLS row of the modified last block) or ``"ordinary"``.
        threshold, background_index: pixels whose best class score is under ``threshold`` get
            ``background_index``; ``"dataset"``: the dataset's own values.
        window_to_model_size: resize windows whose padded size is not the model's input size to it (RS-OVSS).
        simfeatup: path of SegEarth-OV's SimFeatUp weights (upsampled features before the cosine).
        half_model: ``"cuda"`` / ``"always"`` / ``"never"``: a float16 model as the official codes run it.
        templates: prompt templates; default OpenAI's 80 ImageNet templates.
        batch_size: images loaded per step; their windows share encoder batches of ``window_batch_size``
            (default: 64 on an accelerator, about 1024 token rows -- 5 ViT-B/16 windows -- on the CPU).
        overlays, overlay_dir: write ``image | prediction | ground truth`` PNGs of the first ``overlays`` images.
        device: move the model there first (default: use it where it is).
        amp: None = the protocol's precision (its float16 model on CUDA, fp32 on the CPU); ``True``: fp16
            autocast on CUDA; ``"bf16"``: bfloat16 autocast on any device, about 3x faster on a CPU with
            avx512_bf16/AMX, not the paper's protocol (a few pixels in a thousand change class); ``False``: the
            model as given.
        on_error: ``"raise"`` at the first unreadable image or label map, or ``"skip"`` and count it.
        limit: evaluate only the first ``limit`` images.

    Returns:
        ``{"mIoU", "aAcc" (pixel accuracy), "mAcc"}`` in percent (2 decimals) and per-class ``"IoU"``/``"Acc"``
        dicts (None for a class absent from both prediction and ground truth); ``.info`` has counts, timing and
        ``"protocol"``: every setting used (``threshold``/``background_index`` as applied to this dataset).
    """
    proto = get_protocol(protocol, dict(attn=attn, scale=scale, crop=crop, stride=stride, logit_scale=logit_scale,
                                        cls_lambda=cls_lambda, cls_from=cls_from, threshold=threshold,
                                        background_index=background_index,
                                        window_to_model_size=window_to_model_size, simfeatup=simfeatup,
                                        half_model=half_model))
    if isinstance(dataset, dict):
        dataset = OVSSDataset(**dataset)
    if not isinstance(dataset, OVSSDataset):
        raise TypeError("dataset must be an OVSSDataset (for a registered benchmark: "
                        "farslip.eval.OVSS['LoveDA'].dataset(data_root))")
    if is_sam3(proto):
        from .sam3 import sam3_ovss

        return sam3_ovss(sam3, dataset, proto, clip_model=model, clip_tokenizer=tokenizer, batch_size=batch_size,
                         window_batch_size=window_batch_size, num_workers=num_workers, amp=amp, on_error=on_error,
                         limit=limit, overlays=overlays, overlay_dir=overlay_dir, text_cache=text_cache,
                         show_progress=show_progress, desc=desc)
    t0 = time.time()
    if device is not None:
        model.to(device)
    errors = ErrorPolicy(on_error)
    classes = dataset.classes()
    names, owner = query_table(classes)
    class_names = [syn[0] for syn in classes]
    prob_threshold, background = proto.dataset_rule(dataset)
    if not 0 <= background < len(classes):
        raise EvalDataError(f"OVSS dataset {dataset.name!r}: background index {background} is not a "
                            f"class (0..{len(classes) - 1})")
    pairs = dataset.pairs()
    if limit is not None:
        pairs = pairs[:limit]
    model.eval()
    device = model_device(model)
    runtime = protocol_runtime(model, proto, amp)
    if runtime.model is not model:  # the half copy's text embeddings are its own: a cache of its own too
        text_cache = None
    queries = name_embeddings(runtime.model, tokenizer, names, templates or OVSS_TEMPLATES, amp=amp,
                              cache=text_cache)
    meter = SegmentationMeter(len(classes), class_names, dataset.ignore_index)
    shard = batch_shard(len(pairs), batch_size)  # torchrun: this rank's whole batches
    loader = make_loader(SegmentationSamples(pairs[shard.start:shard.stop], dataset, proto.scale), batch_size,
                         num_workers, _collate)
    written = []
    with distributed.all_or_none():
        for batch in progress(loader, desc=desc or f"ovss {dataset.name} ({proto.name})",
                              enabled=show_progress and is_main(), unit="batch"):
            samples, bad = split_bad(batch)
            for b in bad:
                errors(b)
            if not samples:
                continue
            logits = sliding_window_logits(runtime.model, [s["image"] for s in samples], queries,
                                           window_batch_size=window_batch_size, amp=amp,
                                           **runtime.window_options(proto))
            for s, lg in zip(samples, logits):
                scores = class_scores(lg, owner, len(classes), out_size=s["ori_size"],
                                      logit_scale=proto.logit_scale)
                pred = predict_classes(scores, prob_threshold, background)
                label = s["label"].to(device)
                meter.update(pred, label)
                if overlay_dir is not None and len(written) < overlays and is_main():
                    from .overlays import save_overlay

                    out = Path(overlay_dir) / f"{Path(s['path']).stem}.png"
                    save_overlay(out, s["path"], pred.cpu(), s["label"], len(classes), dataset.ignore_index,
                                 class_names=class_names)
                    written.append(str(out))
    distributed.sum_meter(meter)  # intersections and unions of every rank
    errors = distributed.merge_errors(errors)
    if meter.images == 0:
        raise EvalDataError(f"OVSS dataset {dataset.name!r}: no image could be evaluated ({errors.count} skipped)")
    res = EvalResult(meter.compute())
    settings = {**proto.settings(), "threshold": prob_threshold, "background_index": background,
                "precision": "float16 model" if runtime.dtype == torch.float16 else "as given"}
    res.info = {"images": meter.images, "classes": len(classes), "names": len(names), "overlays": written,
                "seconds": round(time.time() - t0, 2), "protocol": settings, **errors.summary()}
    return res
