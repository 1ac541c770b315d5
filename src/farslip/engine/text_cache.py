"""Text embeddings of prompts kept on disk, so that a class list is encoded once per model, not once per run.

A ViT-B's text tower takes minutes on a CPU for the 80 templates of a few class names (640 prompts), and every
``segment``, ``locate``, ``classify`` and ``eval`` run needs them again. They depend only on the text tower's
weights and the prompts, so they are kept in ``<cache>/text-embeddings/<fingerprint>.safetensors``
(:func:`farslip.core.cache.cache_dir`): one file per text tower (a SHA-256 of its weights, their dtypes and the
device kind), one entry per name and prompt set. An entry holds exactly the float32 vector the encoder gave, so a
cached run computes what an uncached one does.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core.cache import cache_dir
from ..core.files import atomic_path

#: (model -> (what its text weights looked like, their fingerprint)): hashing 250 MB is done once per weights.
_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def text_fingerprint(model: nn.Module) -> str:
    """A SHA-256 of every tensor outside the image tower (names, shapes, dtypes, bytes) and the device kind. It is
    computed again only when a tensor was replaced or changed in place since (an optimiser step, a
    ``load_state_dict``): each tensor's version counter says so."""
    tensors = [(k, t) for k, t in model.state_dict(keep_vars=True).items() if not k.startswith("visual.")]
    seen = tuple((k, t.data_ptr(), t._version) for k, t in tensors)
    known = _FINGERPRINTS.get(model)
    if known is not None and known[0] == seen:
        return known[1]
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.device.type}".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    _FINGERPRINTS[model] = (seen, h.hexdigest()[:32])
    return _FINGERPRINTS[model][1]


def entry_name(prompts: Sequence[str], amp) -> str:
    """The key of one name's embedding: its rendered prompts and the autocast it was encoded under."""
    return hashlib.sha256(json.dumps([list(prompts), str(amp)]).encode()).hexdigest()


class DiskTextCache:
    """The embeddings one text tower gave, on disk (see the module's description)."""

    def __init__(self, model: nn.Module, folder: Path):
        self.path = folder / f"{text_fingerprint(model)}.safetensors"

    @classmethod
    def for_model(cls, model: nn.Module) -> "DiskTextCache | None":
        folder = cache_dir("text-embeddings")
        return cls(model, folder) if folder is not None else None

    def read(self) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path))
        except (OSError, SafetensorError):  # none yet, or damaged: computed again and rewritten
            return {}

    def add(self, entries: dict[str, torch.Tensor]) -> None:
        """Keep ``entries`` beside what the file holds (written atomically; a concurrent writer's entries may be
        lost, never mixed up). A cache that cannot be written (read-only home, full disk) is skipped."""
        from safetensors.torch import save_file

        merged = {**self.read(), **{k: v.detach().float().cpu().contiguous() for k, v in entries.items()}}
        try:
            with atomic_path(self.path) as tmp:
                save_file(merged, str(tmp))
        except OSError:
            pass
