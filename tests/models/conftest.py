"""Fixtures of the models tests: a fake Hugging Face Hub on 127.0.0.1 and a tiny checkpoint served from it."""
from __future__ import annotations

import hashlib
import io

import pytest
import torch

from fake_hub import FakeHub


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A running FakeHub that huggingface_hub talks to, with an empty cache of its own.

    huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE into ``constants`` when it is imported, so
    an in-process test sets those attributes (what the variables would have set); the environment variables are
    set too, for commands run in a subprocess."""
    from huggingface_hub import constants

    with FakeHub() as hub:
        cache = tmp_path / "hf-cache"
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        template = hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        for var, value in (("HF_ENDPOINT", hub.url), ("HF_HUB_CACHE", str(cache)), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                           ("HF_TOKEN", "fake-token")):
            monkeypatch.setenv(var, value)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        hub.cache = cache
        yield hub


@pytest.fixture
def tiny_state(tiny_model):
    """The tiny model's weights as a foreign checkpoint (a plain torch state dict, as RemoteCLIP ships), its bytes
    and their sha256."""
    model = tiny_model[0]
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    return model, data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny_on_hub(fake_hub, tiny_state):
    """The tiny checkpoint committed to ``farslip-test/tiny`` on the fake hub and registered as ``tiny-hub``
    (pinned revision, known sha256)."""
    from farslip.models import registry

    model, data, sha256 = tiny_state
    commit = fake_hub.add_file("farslip-test/tiny", "weights/tiny.pt", data)
    entry = registry.register_entry("tiny-hub", title="tiny test CLIP", arch="Test-Tiny-ViT", quick_gelu=True,
                                    context_length=77, image_size=32, license="MIT",
                                    hub={"repo": "farslip-test/tiny", "file": "weights/tiny.pt",
                                         "revision": commit, "sha256": sha256})
    yield model, entry
    registry.unregister_entry("tiny-hub")
