"""Where farslip keeps what it can compute again but would rather not: ``$FARSLIP_CACHE_DIR``, else
``$XDG_CACHE_HOME/farslip``, else ``~/.cache/farslip`` (the XDG base-directory convention). ``FARSLIP_NO_CACHE=1``
turns every such cache off. Deleting the folder is always safe."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path | None:
    """The folder of one kind of cache (``text-embeddings``, ...), or None when caching is turned off."""
    if os.environ.get("FARSLIP_NO_CACHE", "").strip() not in ("", "0"):
        return None
    root = os.environ.get("FARSLIP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "farslip")
    return Path(root) / kind
