"""Evaluation with the paper's protocols: zero-shot classification, image-text retrieval, open-vocabulary
segmentation; the benchmark registry; metrics; reports.

    run = farslip.eval.evaluate("ovss", checkpoint="farslip2-vit-b-16", data_root="/data/rs-bench")
    run.report["sections"]["ovss"]["mean"]["mIoU"], run.paths["json"]    # what `farslip eval ovss` prints, writes

One protocol at a time, on a loaded model:

    model, _, preprocess, tokenizer = farslip.load_model("ViT-B-16", "FarSLIP2_ViT-B-16.pt", device="cuda")
    farslip.eval.zero_shot_classification(model, tokenizer, preprocess, "aid/aid_img_txt_pairs_test.csv",
                                          "aid/classnames.txt", "/data/classification")  # {"top1": %, "top5": %}
    farslip.eval.retrieval(model, tokenizer, preprocess, "RSICD/RSICD_img_txt_pairs_test.csv", "/data/retrieval",
                           prefix="a satellite image. ")                    # {"text2img_R@1": fraction, ...}
    ds = farslip.eval.OVSSDataset("LoveDA/img_dir/val", "LoveDA/ann_dir/val", "cls_loveda.txt",
                                  prob_threshold=0.3, reduce_zero_label=True)
    farslip.eval.ovss(model, tokenizer, ds)                  # FarSLIP's protocol: {"mIoU": %, "aAcc": %, ...}
    farslip.eval.ovss(model, tokenizer, ds, protocol="segearth", threshold=0.2)   # SegEarth-OV's, one override

Several runs side by side with the paper's numbers, and the ablation study evaluated:

    print(farslip.eval.format_tables(farslip.eval.results_tables(["runs/a/eval", "runs/b/eval"])))
    print(farslip.eval.format_tables(farslip.eval.ablation_tables("configs/eval/ablations.yaml", data_root=...)))

SAM 3 (SegEarth-OV3's protocol, and SAM 3 fused with an RS CLIP), and protocols compared on one dataset:

    farslip.eval.evaluate("ovss", "sam3.pt", data_root="/data/rs-bench",
                          options=farslip.eval.EvalOptions(protocol="segearth-ov3"))
    farslip.eval.compare(["farslip", "segearth-ov3", "sam3-clip-fuse"], "loveda", data_root="/data/rs-bench",
                         clip_checkpoint="farslip2-vit-b-16", sam3_checkpoint="sam3.pt").table()
"""
from ..engine import (OVSS_TEMPLATES, SCENE_TEMPLATES, TextEmbeddingCache, class_scores, name_embeddings,
                      predict_classes, sliding_window_logits, window_boxes)
from ..engine.protocols import PROTOCOLS, OVSSProtocol, get_protocol
from .common import EvalResult
from .ablations import ablation_tables
from .compare import Comparison, compare
from .evaluation import (ClassificationData, EvalOptions, EvalReport, OVSSData, RetrievalData, evaluate,
                         published_numbers)
from .io import EvalDataError
from .metrics import (SegmentationMeter, best_positive_rank, intersect_and_union, percent, recall_at_k,
                      recall_from_ranks, reduce_zero_label, segmentation_scores, topk_correct)
from .ovss import OVSSDataset, ovss
from .registry import CLASSIFICATION, OVSS, RETRIEVAL, select
from .retrieval import SATELLITE_PREFIX, retrieval
from .tables import format_tables, read_results, results_tables
from .zeroshot import zero_shot_classification

__all__ = [
    "CLASSIFICATION", "ClassificationData", "Comparison", "EvalDataError", "EvalOptions", "EvalReport", "EvalResult", "OVSS",
    "OVSSData", "OVSSDataset", "OVSSProtocol", "OVSS_TEMPLATES", "PROTOCOLS", "RETRIEVAL", "RetrievalData",
    "ablation_tables", "evaluate", "format_tables", "get_protocol", "published_numbers", "read_results",
    "results_tables",
    "SATELLITE_PREFIX", "SCENE_TEMPLATES", "SegmentationMeter", "TextEmbeddingCache", "best_positive_rank",
    "class_scores", "compare", "intersect_and_union", "name_embeddings", "ovss", "percent", "predict_classes", "recall_at_k",
    "recall_from_ranks", "reduce_zero_label", "retrieval", "segmentation_scores", "select",
    "sliding_window_logits", "topk_correct", "window_boxes", "zero_shot_classification",
]
