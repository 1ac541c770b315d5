"""The dense-prediction engine that evaluation and inference share: text embeddings of class names and prompts,
sliding-window dense logits, class scores and the prediction rule, and the image preparation the protocols use.

    text = name_embeddings(model, tokenizer, names, OVSS_TEMPLATES)          # [Q, D]
    logits = sliding_window_logits(model, [image], text)[0]                 # [Q, H, W]
    labels = predict_classes(class_scores(logits, owner, num_classes))      # [H, W]
"""
from .images import PIXEL_MEAN, PIXEL_STD, model_input_size, normaliser, prepare_image, rescaled_size
from .prompts import (OVSS_TEMPLATES, SCENE_TEMPLATES, Template, TextEmbeddingCache, encode_texts, name_embeddings,
                      query_table, render)
from .scores import class_scores, predict_classes, scene_logits, scene_probabilities
from .windows import default_window_batch, pad_to_patch, sliding_window_logits, window_boxes, window_logits, window_spans

__all__ = [
    "OVSS_TEMPLATES", "PIXEL_MEAN", "PIXEL_STD", "SCENE_TEMPLATES", "Template", "TextEmbeddingCache", "class_scores",
    "default_window_batch", "encode_texts", "model_input_size", "name_embeddings", "normaliser", "pad_to_patch",
    "predict_classes", "prepare_image", "query_table", "render", "rescaled_size", "scene_logits",
    "scene_probabilities", "sliding_window_logits",
    "window_boxes", "window_logits", "window_spans",
]
