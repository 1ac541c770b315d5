"""The dense-prediction engine that evaluation and inference share: text embeddings of class names and prompts,
sliding-window dense logits, class scores and the prediction rule, and the image preparation the protocols use.

    text = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES)          # [Q, D]
    logits = sliding_window_logits(model, [image], text)[0]                 # [Q, H, W]
    labels = predict_classes(class_scores(logits, owner, num_classes))      # [H, W]

Its parts are imported on first use (``farslip --help`` does not load torch).
"""
from ..core.lazy import lazy_exports

_EXPORTS = {
    **{name: ".images" for name in ("PIXEL_MEAN", "PIXEL_STD", "model_input_size", "normaliser", "prepare_image",
                                    "rescaled_size")},
    **{name: ".prompts" for name in ("OVSS_TEMPLATES", "SCENE_TEMPLATES", "Template", "TextEmbeddingCache",
                                     "encode_texts", "name_embeddings", "query_table", "render")},
    **{name: ".scores" for name in ("class_scores", "predict_classes", "scene_logits", "scene_probabilities")},
    **{name: ".windows" for name in ("default_window_batch", "pad_to_patch", "sliding_window_logits",
                                     "window_boxes", "window_logits", "window_spans")},
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
