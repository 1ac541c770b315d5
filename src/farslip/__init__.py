"""farslip: FarSLIP (fine-grained CLIP for remote sensing) as a layer on stock open_clip.

    model, preprocess_train, preprocess_eval, tokenizer = farslip.load_model("ViT-B-16", "FarSLIP2_ViT-B-16.pt")
    tokens, cls = farslip.dense_features(model, images)          # [B, gh, gw, D], [B, D]
    losses = farslip.objectives.FarSLIPObjective.stage1()(model, batch)
"""
from . import objectives
from .models import dense_features, extend_text_context, load_model, save_model
from .objectives import FarSLIPObjective


def __getattr__(name):
    # The inference API (farslip.segment / classify / search / locate / view) imports rasterio and matplotlib: load
    # it on first use.
    if name in ("segment", "classify", "search", "locate", "view"):
        from . import infer

        return getattr(infer, name)
    if name in ("eval", "dataprep", "train", "data", "infer", "engine", "core"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'farslip' has no attribute {name!r}")

__version__ = "0.1.0"
__all__ = ["FarSLIPObjective", "classify", "dense_features", "extend_text_context", "load_model", "locate",
           "objectives", "save_model", "search", "segment", "view"]
