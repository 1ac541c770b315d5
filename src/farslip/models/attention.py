"""The attention variants of the modified last block (``dense_features(attn=...)``), in a module of their own so
that the command line can list them without loading torch."""

ATTENTION_VARIANTS = ("segearth", "sclip", "clearclip", "maskclip", "vanilla")
