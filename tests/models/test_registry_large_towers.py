"""The registry's RS CLIPs on large towers (RemoteCLIP, GeoRSCLIP and SkyCLIP ViT-L/14, GeoRSCLIP ViT-H/14, OpenAI
ViT-L/14): their architectures take such weights and give dense features (full size, shapes only, on the meta
device), and a patch-14 tower served by name from a (local stand-in) hub loads and gives the same dense features."""
from __future__ import annotations

import hashlib
import io

import open_clip
import pytest
import torch

import farslip
from farslip.models import architectures_fitting, registry

LARGE = sorted(name for name, e in registry.all_entries().items() if e.arch and e.arch.startswith(("ViT-L", "ViT-H")))


def test_the_registry_has_large_towers():
    assert {"remoteclip-vit-l-14", "georsclip-vit-l-14", "georsclip-vit-h-14", "skyclip-vit-l-14",
            "openai-vit-l-14"} <= set(LARGE)


@pytest.mark.parametrize("name", LARGE)
def test_registered_large_tower_takes_its_weights_and_gives_dense_features(name):
    entry = registry.get_entry(name)
    with torch.device("meta"):
        model = open_clip.create_model(entry.arch, device="meta")
    assert entry.arch in architectures_fitting(model.state_dict())  # the loader reads such a file as this arch
    size = entry.image_size or 224
    tokens, cls = farslip.dense_features(model, torch.empty(2, 3, size + 112, size + 112, device="meta"),
                                         cls_from="surgery")
    grid = (size + 112) // 14
    assert tokens.shape == (2, grid, grid, cls.shape[-1])


@pytest.fixture
def tiny_l14_on_hub(fake_hub, tiny_towers):
    torch.manual_seed(0)
    model = farslip.load_model(tiny_towers["vit-l14"])[0].eval()
    buf = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, buf)  # a DDP save
    data = buf.getvalue()
    commit = fake_hub.add_file("farslip-test/tiny-l14", "ckpt/tiny-l14.pt", data)
    registry.register_entry("tiny-l14-hub", title="tiny patch-14 CLIP", arch=tiny_towers["vit-l14"],
                            quick_gelu=True, context_length=77, image_size=56, license="MIT",
                            hub={"repo": "farslip-test/tiny-l14", "file": "ckpt/tiny-l14.pt", "revision": commit,
                                 "sha256": hashlib.sha256(data).hexdigest()})
    yield model
    registry.unregister_entry("tiny-l14-hub")


def test_large_tower_by_name_gives_dense_features(tiny_l14_on_hub):
    loaded = farslip.load_model("tiny-l14-hub")[0].eval()
    images = torch.randn(1, 3, 84, 98)  # 6 x 7 patches of 14 px
    with torch.no_grad():
        want, _ = farslip.dense_features(tiny_l14_on_hub, images)
        got, _ = farslip.dense_features(loaded, images)
    assert got.shape == (1, 6, 7, 40) and torch.equal(got, want)
