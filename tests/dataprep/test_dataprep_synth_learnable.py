"""Learnability of the synthetic world: a tiny CLIP trained from scratch on CPU for a couple of minutes reaches
zero-shot scene accuracy far above chance. Slow (40 s to 3 minutes on 2 cores, with load): ``make test-slow``."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from farslip.dataprep import synth_world

TINY = {"embed_dim": 128, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3}}


def _load(paths, res=64):
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((res, res), Image.BICUBIC)) for p in paths])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.481, 0.458, 0.408]).view(1, 3, 1, 1)
    std = torch.tensor([0.269, 0.261, 0.276]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_clip_learns_scene_classes(tmp_path):
    import open_clip

    w = tmp_path / "world"
    synth_world(w, n=1000, n_test=160, seed=0, progress=False)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "Tiny-Synth-Test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(0)
    model = open_clip.create_model("Tiny-Synth-Test")
    tok = open_clip.get_tokenizer("Tiny-Synth-Test")
    rows = list(csv.DictReader(open(w / "captions.csv")))
    x_train, t_train = _load([w / r["filepath"] for r in rows]), tok([r["title"] for r in rows])
    cls = list(csv.DictReader(open(w / "cls" / "test.csv")))
    names = (w / "cls" / "classnames.txt").read_text().splitlines()
    x_test, y_test = _load([w / "cls" / r["filepath"] for r in cls]), torch.tensor([int(r["label"]) for r in cls])

    def zero_shot() -> float:
        model.eval()
        with torch.no_grad():
            te = torch.stack([F.normalize(F.normalize(model.encode_text(
                tok([f"a satellite photo of {c}.", f"a satellite image of {c}"])), dim=-1).mean(0), dim=0)
                for c in names])
            ie = F.normalize(model.encode_image(x_test), dim=-1)
            acc = ((ie @ te.T).argmax(1) == y_test).float().mean().item()
        model.train()
        return acc

    before = zero_shot()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # plain CLIP InfoNCE, batch 96
        idx = torch.randperm(len(x_train), generator=gen)[:96]
        ie = F.normalize(model.encode_image(x_train[idx]), dim=-1)
        te = F.normalize(model.encode_text(t_train[idx]), dim=-1)
        logits = model.logit_scale.exp() * ie @ te.T
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = zero_shot()
    print(f"zero-shot scene top-1: {before:.3f} untrained -> {after:.3f} after 40 steps (chance {1 / len(names):.3f})")
    assert after >= 0.5, (before, after)
