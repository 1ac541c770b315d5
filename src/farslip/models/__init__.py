"""Models: load any CLIP checkpoint into stock open_clip, long text, dense features.

Its parts are imported on first use (``farslip --help`` does not load torch)."""
from ..core.lazy import lazy_exports

_EXPORTS = {
    "ATTENTION_VARIANTS": ".attention",
    "CheckpointError": ".checkpoint_io", "read_checkpoint": ".checkpoint_io", "write_checkpoint": ".checkpoint_io",
    "dense_features": ".dense", "encode_views": ".dense", "interpolate_pos_embed": ".dense",
    **{name: ".loading" for name in ("architectures_fitting", "describe_state_dict", "drop_text_tower", "load_model",
                                     "model_meta", "register_model_configs", "save_model", "weights_fingerprint")},
    "extend_text_context": ".long_text", "restore_frozen_rows": ".long_text",
    "stretch_positional_embedding": ".long_text",
    "get_entry": ".registry", "register_entry": ".registry",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
