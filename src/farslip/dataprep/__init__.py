"""Building FarSLIP training and test data.

* :func:`build_mgrs` turns a detection dataset (DOTA, DIOR, FAIR1M, COCO JSON) into MGRS-format data
  (``text_info.json`` + ``global_imgs/``), cutting large scenes into chips and captioning each chip.
* :class:`TemplateCaptioner` and :class:`MLLMCaptioner` (any OpenAI-compatible endpoint) write the captions.
* :func:`validate_mgrs` and :func:`mgrs_stats` check and describe an MGRS JSON.
* :func:`synth_world` writes a procedural remote-sensing world in every format the project reads.

CLI: ``farslip data build|validate|stats|synth|caption`` (see ``farslip data --help``).
"""
from .captions import (MLLMCaptioner, MLLMError, OpenAIChatClient, RateLimiter, TemplateCaptioner,
                       parse_caption_reply)
from .chips import chip_boxes, clip_polygon, load_rgb, objects_in_box
from .detection import (FORMATS, DetObject, LabelFile, LabelFileError, SourceImage, read_coco, read_dior,
                        read_dota, read_fair1m, read_label_file, read_voc, scan_dataset)
from .mgrs import (BuildConfig, BuildError, build_mgrs, format_summary, mgrs_bbox, mgrs_record, recaption_mgrs,
                   write_mgrs_json)
from .names import CategoryMap, assign_category_ids, load_category_ids, load_category_map, normalize_category
from ..core.problems import Problem
from .stats import format_stats, mgrs_stats, plot_stats
from .synth import OBJECT_CATEGORIES, OVSS_CLASSES, SCENES, render_scene, synth_world
from .validate import ValidationReport, load_mgrs, validate_mgrs

__all__ = [
    "FORMATS", "OBJECT_CATEGORIES", "OVSS_CLASSES", "SCENES",
    "BuildConfig", "BuildError", "CategoryMap", "DetObject", "LabelFile", "LabelFileError", "MLLMCaptioner",
    "MLLMError", "OpenAIChatClient", "Problem", "RateLimiter", "SourceImage", "TemplateCaptioner",
    "ValidationReport",
    "assign_category_ids", "build_mgrs", "chip_boxes", "clip_polygon", "format_stats", "format_summary",
    "load_category_ids", "load_category_map", "load_mgrs", "load_rgb", "mgrs_bbox", "mgrs_record", "mgrs_stats",
    "normalize_category", "objects_in_box", "parse_caption_reply", "plot_stats", "read_coco", "read_dior",
    "read_dota", "read_fair1m", "read_label_file", "read_voc", "recaption_mgrs", "render_scene", "scan_dataset",
    "synth_world", "validate_mgrs", "write_mgrs_json",
]
