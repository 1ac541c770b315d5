"""Text side of the engine: prompt templates, and the prompt-ensembled embedding of each name."""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..models.precision import Amp, autocast_for, model_device
from .text_cache import DiskTextCache, entry_name

Template = str | Callable[[str], str]


#: Zero-shot scene classification prompts (SkyScript's, used by FarSLIP for all eight sets).
SCENE_TEMPLATES: tuple[str, ...] = ("a satellite photo of {c}.", "a satellite image of {c}")


def render(template: Template, name: str) -> str:
    """Fill a prompt template: a callable, or a string with ``{c}`` (or a bare ``{}``) where the name goes."""
    if callable(template):
        return template(name)
    if "{c}" in template:
        return template.replace("{c}", name)
    if "{}" in template:
        return template.replace("{}", name)
    raise ValueError(f"template {template!r} has no '{{c}}' for the class name")


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 256,
                 amp: Amp = False, progress: bool = False) -> torch.Tensor:
    """L2-normalised text embeddings ``[n, D]`` (in the dtype the model produces). ``progress``: a bar with the
    time left, shown when the encoding takes more than a couple of seconds (a ViT-B on a CPU: minutes)."""
    from tqdm.auto import tqdm

    device = model_device(model)
    out = []
    with tqdm(total=len(texts), desc="text prompts", unit="prompt", delay=2, disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[i:i + batch_size])).to(device)
            with autocast_for(model, amp):
                out.append(F.normalize(model.encode_text(tokens), dim=-1))
            bar.update(len(tokens))
    return torch.cat(out) if out else torch.empty(0, device=device)


class TextEmbeddingCache:
    """Prompt-ensembled name embeddings, computed once per (name, templates) for one model.

    Create one per model (and drop it when the weights change): a benchmark suite shares it across datasets, so a
    class list -- and a name that several lists share -- is encoded once.
    """

    def __init__(self):
        self._store: dict = {}

    def get(self, key):
        return self._store.get(key)

    def put(self, key, value) -> None:
        self._store[key] = value

    def __len__(self) -> int:
        return len(self._store)


@torch.no_grad()
def name_embeddings(model: nn.Module, tokenizer, names: Sequence[str], templates: Iterable[Template], *,
                    batch_size: int = 256, amp: Amp = False, cache: TextEmbeddingCache | None = None,
                    progress: bool = False) -> torch.Tensor:
    """Per name: the mean of its normalised prompt embeddings, renormalised. ``[len(names), D]``.

    This is both the zero-shot classifier (SkyScript's ``zero_shot_classifier``) and SegEarth-OV's query
    features (with OpenAI's 80 ImageNet templates). Names found in ``cache`` (this process) or on disk
    (:mod:`~farslip.engine.text_cache`: every run of any command with the same text weights) are not encoded
    again; ``progress`` shows a bar while the others are.
    """
    templates = list(templates)
    if not templates:
        raise ValueError("no prompt templates")
    keys = [(tuple(render(t, n) for t in templates), amp) for n in names]
    found = {i: cache.get(k) for i, k in enumerate(keys) if cache is not None and cache.get(k) is not None}
    disk = DiskTextCache.for_model(model) if len(found) < len(names) else None
    if disk is not None:
        stored = disk.read()
        device = model_device(model)
        found.update({i: stored[entry_name(*k)].to(device) for i, k in enumerate(keys)
                      if i not in found and entry_name(*k) in stored})
    todo = [i for i in range(len(names)) if i not in found]
    if todo:
        prompts = [p for i in todo for p in keys[i][0]]
        emb = encode_texts(model, tokenizer, prompts, batch_size=batch_size, amp=amp, progress=progress)
        emb = emb.float().view(len(todo), len(templates), -1).mean(dim=1)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        found.update({i: emb[j] for j, i in enumerate(todo)})
        if disk is not None:
            disk.add({entry_name(*keys[i]): found[i] for i in todo})
    if cache is not None:
        for i, k in enumerate(keys):
            cache.put(k, found[i])
    return torch.stack([found[i] for i in range(len(names))])


#: OpenAI's 80 ImageNet prompt templates (the same list and order SegEarth-OV uses).
OVSS_TEMPLATES: tuple[Template, ...] = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)


def query_table(classes: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """Flatten synonym lists: all names in order, and each name's class index."""
    names = [n for syn in classes for n in syn]
    owner = torch.tensor([c for c, syn in enumerate(classes) for _ in syn], dtype=torch.long)
    return names, owner

