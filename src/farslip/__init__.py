"""farslip: FarSLIP (fine-grained CLIP for remote sensing) as a layer on stock open_clip.

    model, preprocess_train, preprocess_eval, tokenizer = farslip.load_model("ViT-B-16", "FarSLIP2_ViT-B-16.pt")
    tokens, cls = farslip.dense_features(model, images)          # [B, gh, gw, D], [B, D]
    losses = farslip.objectives.FarSLIPObjective.stage1()(model, batch)
"""
from .core.lazy import lazy_exports

# Everything is imported on first use: ``farslip --help`` and an argument error answer without loading torch,
# and ``farslip.segment`` (rasterio, matplotlib) costs nothing to a training script.
_EXPORTS = {
    **{name: ".models" for name in ("dense_features", "extend_text_context", "load_model", "save_model")},
    "FarSLIPObjective": ".objectives",
    **{name: ".infer" for name in ("segment", "classify", "search", "locate", "view")},
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"
__all__ = ["FarSLIPObjective", "classify", "dense_features", "extend_text_context", "load_model", "locate",
           "objectives", "save_model", "search", "segment", "view"]
