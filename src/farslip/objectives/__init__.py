"""Objectives: global ITC, patch-to-patch distillation, region-category alignment and the paper's ablations."""
from .contrastive import clip_loss, multi_positive_loss, sigmoid_loss
from .distill import cosine_distill_loss, roi_pooled
from .farslip import CAPTION_REGIONS, DISTILL_ALIGNS, GLOBAL_LOSSES, REGION_ALIGNS, TARGETS, FarSLIPObjective
from .teacher import make_teacher, update_ema

__all__ = ["CAPTION_REGIONS", "DISTILL_ALIGNS", "FarSLIPObjective", "GLOBAL_LOSSES", "REGION_ALIGNS", "TARGETS",
           "clip_loss", "cosine_distill_loss", "make_teacher", "multi_positive_loss", "roi_pooled", "sigmoid_loss",
           "update_ema"]
