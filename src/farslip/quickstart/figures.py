"""The quickstart report's pictures: the three training runs' loss curves, and one retrieval query's top images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

# run folder -> (title, the loss terms it logs: global ITC, then the stage's own term)
CURVES = {"pretrain": ("pretraining (stand-in CLIP)", ("global_itc",)),
          "stage1": ("FarSLIP stage 1", ("global_itc", "distill")),
          "stage2": ("FarSLIP stage 2", ("global_itc", "region_itc"))}


def loss_curves(out: Path, png: Path) -> Path:
    """``png``: the loss per step of ``OUT/runs/{pretrain,stage1,stage2}/log.jsonl``, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(15, 4))
    for ax, (name, (title, keys)) in zip(axes, CURVES.items()):
        log = [json.loads(x) for x in (out / "runs" / name / "log.jsonl").read_text().splitlines()]
        log = [e for e in log if keys[0] in e]
        steps = [e["step"] for e in log]
        ax.plot(steps, [e[keys[0]] for e in log], label=keys[0], color="C0")
        if len(keys) > 1:  # the second term on its own axis: its scale can be far smaller
            twin = ax.twinx()
            twin.plot(steps, [e[keys[1]] for e in log], label=keys[1], color="C1")
            twin.set_ylabel(keys[1], color="C1")
            ax.plot([], [], color="C1", label=keys[1] + " (right axis)")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def retrieval_example(checkpoint: Path, world: Path, png: Path, k: int = 5) -> dict:
    """One held-out caption of the world's retrieval set and the model's top-k images for it, drawn to ``png``.

    Returns ``caption``, ``truth`` (the true image's file name) and ``top`` (the top-k file names, best first).
    """
    from PIL import Image

    from ..infer.search import Hit, contact_sheet
    from ..models import load_model

    model, _, preprocess, tokenizer = load_model(checkpoint=checkpoint)
    model.eval()
    with open(world / "retrieval" / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = sorted({r["filepath"] for r in rows})
    query = rows[len(rows) // 3]
    with torch.no_grad():
        ims = torch.stack([preprocess(Image.open(world / "retrieval" / p).convert("RGB")) for p in paths])
        img = model.encode_image(ims)
        txt = model.encode_text(tokenizer([query["title"]]))
        scores = (img / img.norm(dim=-1, keepdim=True)) @ (txt / txt.norm(dim=-1, keepdim=True))[0]
    vals, idx = scores.topk(min(k, len(paths)))
    hits = [Hit(str(world / "retrieval" / paths[i]), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]
    contact_sheet(hits, png, title=f'"{query["title"]}"', cols=k)
    return {"caption": query["title"], "truth": Path(query["filepath"]).name, "top": [Path(h.path).name for h in hits]}
