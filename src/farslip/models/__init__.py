"""Models: load any CLIP checkpoint into stock open_clip, long text, dense features."""
from .checkpoint_io import CheckpointError, read_checkpoint, write_checkpoint
from .dense import ATTENTION_VARIANTS, dense_features, encode_views, interpolate_pos_embed
from .loading import (architectures_fitting, describe_state_dict, drop_text_tower, load_model, model_meta,
                      register_model_configs, save_model, weights_fingerprint)
from .long_text import extend_text_context, restore_frozen_rows, stretch_positional_embedding
from .registry import get_entry, register_entry

__all__ = [
    "ATTENTION_VARIANTS", "CheckpointError", "architectures_fitting", "dense_features", "describe_state_dict",
    "drop_text_tower", "encode_views",
    "extend_text_context", "get_entry", "interpolate_pos_embed", "load_model", "model_meta", "read_checkpoint",
    "register_entry", "register_model_configs", "restore_frozen_rows", "save_model", "stretch_positional_embedding",
    "weights_fingerprint", "write_checkpoint",
]
