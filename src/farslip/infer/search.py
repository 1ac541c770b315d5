"""``farslip search``: embed a folder of images once (cached, incremental), then query it by text or by image.

    farslip.search.index("tiles/", checkpoint="model.pt")                 # writes tiles/.farslip-index/
    hits = farslip.search.query("a harbour with ships", index="tiles/", checkpoint="model.pt", top=20)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..engine import model_input_size
from ..models.precision import Amp, autocast_for
from .classify import load_image
from .common import load_for_inference

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2"}
INDEX_DIR = ".farslip-index"


@dataclass
class Hit:
    path: str
    score: float


def _index_paths(folder: Path, index_dir: Path | None) -> tuple[Path, Path]:
    d = index_dir or folder / INDEX_DIR
    return d / "embeddings.safetensors", d / "index.json"


def _model_id(checkpoint) -> str:
    p = Path(str(checkpoint))
    return f"{p.resolve()}:{p.stat().st_mtime_ns}" if p.is_file() else str(checkpoint)


def index(folder: str | Path, *, checkpoint: str | Path | None = None, model=None, preprocess=None,
          arch: str | None = None, device: str = "auto", index_dir: str | Path | None = None,
          batch_size: int = 32, progress: bool = True, amp: Amp = None) -> dict:
    """Embed every image under ``folder`` (recursively). Files already embedded with the same model and unchanged
    (size, mtime) are reused; removed files are dropped. Returns counts. ``amp`` as in the evaluation (None: float16
    autocast on CUDA, fp32 on CPU; ``"bf16"``: bfloat16 on any device)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    emb_path, meta_path = _index_paths(folder, Path(index_dir) if index_dir else None)
    if model is None:
        model, preprocess, _ = load_for_inference(checkpoint, arch, device)
    mid = _model_id(checkpoint) if checkpoint is not None else getattr(model, "farslip_arch", "model")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and INDEX_DIR not in p.parts)
    old = {}
    if meta_path.exists() and emb_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("model") == mid:
            emb = load_file(str(emb_path))["embeddings"]
            old = {e["path"]: (e["size"], e["mtime"], emb[i]) for i, e in enumerate(meta["entries"])}
    entries, vectors, todo = [], [], []
    for p in files:
        rel, st = str(p.relative_to(folder)), p.stat()
        hit = old.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            entries.append({"path": rel, "size": st.st_size, "mtime": st.st_mtime_ns})
            vectors.append(hit[2])
        else:
            todo.append((rel, st))
    failed = []
    device_ = next(model.parameters()).device
    side = 2 * model_input_size(model)
    for start in tqdm(range(0, len(todo), batch_size), desc="index", unit="batch", disable=not progress):
        chunk, ims = [], []
        for rel, st in todo[start:start + batch_size]:
            try:
                ims.append(preprocess(load_image(folder / rel, side)))
                chunk.append((rel, st))
            except (OSError, ValueError) as exc:
                failed.append({"path": rel, "error": str(exc)})
        if not ims:
            continue
        with torch.no_grad(), autocast_for(model, amp):
            f = model.encode_image(torch.stack(ims).to(device_)).float()
        f = (f / f.norm(dim=-1, keepdim=True)).cpu()
        for (rel, st), v in zip(chunk, f):
            entries.append({"path": rel, "size": st.st_size, "mtime": st.st_mtime_ns})
            vectors.append(v)
    emb_path.parent.mkdir(parents=True, exist_ok=True)
    matrix = torch.stack(vectors) if vectors else torch.zeros(0, 1)
    save_file({"embeddings": matrix.contiguous()}, str(emb_path))
    meta_path.write_text(json.dumps({"model": mid, "folder": str(folder.resolve()), "entries": entries,
                                     "failed": failed}, indent=1))
    return {"images": len(entries), "embedded": len(todo) - len(failed), "reused": len(entries) - len(todo) + len(failed),
            "failed": len(failed), "index": str(emb_path.parent)}


def query(q: str | Path, *, index: str | Path, checkpoint: str | Path | None = None, model=None, preprocess=None,
          tokenizer=None, arch: str | None = None, device: str = "auto", top: int = 20,
          index_dir: str | Path | None = None, amp: Amp = None) -> list[Hit]:
    """Rank the indexed images by cosine similarity to a text, or to an image when ``q`` is an image file."""
    folder = Path(index)
    emb_path, meta_path = _index_paths(folder, Path(index_dir) if index_dir else None)
    if not meta_path.exists():
        raise FileNotFoundError(f"no index in {emb_path.parent}: run `farslip search index {folder}` first")
    meta = json.loads(meta_path.read_text())
    if model is None:
        model, preprocess, tokenizer = load_for_inference(checkpoint, arch, device)
    device_ = next(model.parameters()).device
    with torch.no_grad(), autocast_for(model, amp):
        if os.path.isfile(str(q)) and Path(q).suffix.lower() in IMAGE_SUFFIXES:
            v = model.encode_image(preprocess(load_image(Path(q), 2 * model_input_size(model)))[None].to(device_))
        else:
            v = model.encode_text(tokenizer([str(q)]).to(device_))
    v = (v / v.norm(dim=-1, keepdim=True)).float().cpu()[0]
    emb = load_file(str(emb_path))["embeddings"]
    if emb.shape[0] == 0:
        return []
    scores = emb @ v
    vals, idx = scores.topk(min(top, len(scores)))
    return [Hit(str(folder / meta["entries"][i]["path"]), round(float(s), 4)) for s, i in zip(vals.tolist(), idx.tolist())]


def contact_sheet(hits: Sequence[Hit], out: str | Path, title: str = "", thumb: int = 160, cols: int = 5) -> Path:
    """A PNG grid of the hits with rank and score under each thumbnail."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(hits) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * thumb / 80, rows * thumb / 80 + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, h in enumerate(hits):
        ax = axes.ravel()[i]
        ax.imshow(load_image(Path(h.path), thumb))
        ax.set_title(f"{i + 1}. {Path(h.path).name}\n{h.score:.3f}", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
