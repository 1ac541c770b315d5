"""OVSS mIoU under a SAM 3 protocol (``segearth-ov3`` and the fusions with a CLIP), as SegEarth-OV3's ``eval.py``
computes it: each image read by PIL at its own size, the dataset config's windows (or the whole image) through
SAM 3 (``engine/sam3.py``), a class's map its best synonym's, argmax, pixels under ``prob_thd`` -> ``bg_idx``,
intersections and unions over the dataset (mmseg's IoUMetric, the dataset's label handling)."""
from __future__ import annotations

import time
from pathlib import Path

from ..core.distributed import batch_shard, is_main
from ..engine import TextEmbeddingCache, predict_classes, query_table
from ..engine.class_files import resolve_class_file
from ..engine.fusion import clip_side, fused_runtime
from ..engine.protocols import Sam3Protocol
from ..engine.sam3 import FusionRule, sam3_runtime, sam3_windows, synonym_max
from ..models.precision import Amp, model_device
from ..models.sam3 import sam3_tokenizer
from . import distributed
from .common import EvalResult, make_loader, progress, split_bad
from .io import ErrorPolicy, EvalDataError, read_synonym_file
from .metrics import SegmentationMeter


def sam3_ovss(sam3, dataset, protocol: Sam3Protocol, *, clip_model=None, clip_tokenizer=None, batch_size: int = 1,
              window_batch_size: int | None = None, num_workers: int | None = None, amp: Amp = None,
              on_error: str = "raise", limit: int | None = None, overlays: int = 0, overlay_dir=None,
              text_cache: TextEmbeddingCache | None = None, show_progress: bool = True,
              desc: str | None = None) -> EvalResult:
    """mIoU of the SAM 3 ``sam3`` (a transformers ``Sam3Model``, :func:`farslip.models.sam3.load_sam3`) on
    ``dataset`` (an ``OVSSDataset``) under ``protocol``; the fusions also take the CLIP ``clip_model`` and its
    tokenizer. On the eight registered benchmarks the protocol applies SegEarth-OV3's config of the dataset
    (windows, confidence, ``prob_thd``, ``bg_idx``, class names); elsewhere the dataset's own threshold and
    background index. ``amp`` is the CLIP's (the fusions); SAM 3's precision is the protocol's ``autocast``.
    Returns what :func:`~farslip.eval.ovss.ovss` returns; ``.info["protocol"]`` holds every setting applied."""
    from .ovss import SegmentationSamples, _collate

    if sam3 is None:
        raise ValueError(f"protocol {protocol.name} runs SAM 3: pass sam3= (farslip.models.sam3.load_sam3)")
    if protocol.needs_clip and (clip_model is None or clip_tokenizer is None):
        raise ValueError(f"protocol {protocol.name} fuses SAM 3 with a CLIP: pass the CLIP model and its tokenizer")
    t0 = time.time()
    errors = ErrorPolicy(on_error)
    rule = protocol.dataset_rule(dataset)
    classes = read_synonym_file(resolve_class_file(rule.class_file)) if rule.class_file else dataset.classes()
    names, owner = query_table(classes)
    class_names = [syn[0] for syn in classes]
    if not 0 <= rule.background_index < len(classes):
        raise EvalDataError(f"OVSS dataset {dataset.name!r}: background index {rule.background_index} is not a "
                            f"class (0..{len(classes) - 1})")
    pairs = dataset.pairs()[:limit] if limit is not None else dataset.pairs()
    device = model_device(sam3)
    autocast = protocol.autocast == "always" or (protocol.autocast == "cuda" and device.type == "cuda")
    runtime = sam3_runtime(sam3, sam3_tokenizer(), names, FusionRule(rule.confidence, protocol.instances,
                                                                      protocol.semantic, protocol.presence),
                           autocast=autocast, window_batch=window_batch_size)
    if protocol.needs_clip:
        runtime = fused_runtime(runtime, clip_side(clip_model, clip_tokenizer, names, protocol, amp=amp,
                                                   cache=text_cache), protocol)
    meter = SegmentationMeter(len(classes), class_names, dataset.ignore_index)
    shard = batch_shard(len(pairs), batch_size)  # torchrun: this rank's whole batches
    loader = make_loader(SegmentationSamples(pairs[shard.start:shard.stop], dataset, None, pil=True), batch_size,
                         num_workers, _collate)
    written = []
    with distributed.all_or_none():
        for batch in progress(loader, desc=desc or f"ovss {dataset.name} ({protocol.name})",
                              enabled=show_progress and is_main(), unit="batch"):
            samples, bad = split_bad(batch)
            for b in bad:
                errors(b)
            for s in samples:
                image = s["image"]
                maps = runtime.image_maps(image, sam3_windows(image.shape[1], image.shape[2], rule.crop, rule.stride))
                pred = predict_classes(synonym_max(maps, owner, len(classes)), rule.threshold, rule.background_index)
                meter.update(pred, s["label"].to(pred.device))
                if overlay_dir is not None and len(written) < overlays and is_main():
                    from .overlays import save_overlay

                    out = Path(overlay_dir) / f"{Path(s['path']).stem}.png"
                    save_overlay(out, s["path"], pred.cpu(), s["label"], len(classes), dataset.ignore_index,
                                 class_names=class_names)
                    written.append(str(out))
    distributed.sum_meter(meter)
    errors = distributed.merge_errors(errors)
    if meter.images == 0:
        raise EvalDataError(f"OVSS dataset {dataset.name!r}: no image could be evaluated ({errors.count} skipped)")
    res = EvalResult(meter.compute())
    settings = {**protocol.settings(), "crop": rule.crop, "stride": rule.stride, "confidence": rule.confidence,
                "threshold": rule.threshold, "background_index": rule.background_index,
                "class_file": rule.class_file or str(dataset.class_file), "arithmetic":
                "bf16 autocast" if autocast else "fp32", "sam3": getattr(sam3, "farslip_sam3", None)}
    res.info = {"images": meter.images, "classes": len(classes), "names": len(names), "overlays": written,
                "seconds": round(time.time() - t0, 2), "protocol": settings, **errors.summary()}
    return res
