"""The model registry: the packaged entries, user entries, and loading by name through a fake Hugging Face Hub."""
from __future__ import annotations

import re

import pytest
import torch

import farslip
from farslip.models import registry
from farslip.models.hub import ModelUnavailableError, fetch_weights

COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _same_embeddings(a, b):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.encode_image(x), b.encode_image(x))


# ----------------------------------------------------------------------------------------------------------------
# The packaged registry

def test_packaged_registry_has_every_release_with_a_pinned_source():
    entries = registry.all_entries()
    for name in ("farslip1-vit-b-32", "farslip1-vit-b-16", "farslip2-vit-b-32", "farslip2-vit-b-16",
                 "remoteclip-rn50", "remoteclip-vit-b-32", "remoteclip-vit-l-14", "georsclip-vit-b-32",
                 "georsclip-vit-l-14", "georsclip-vit-h-14", "skyclip-vit-b-32", "skyclip-vit-l-14",
                 "openai-vit-b-16"):
        assert name in entries, name
    for e in entries.values():
        assert e.citation, f"{e.name} has no citation"
        assert e.license and e.license != "unknown", e.name
        assert set(e.confirmed) >= {"file", "revision", "how"}, e.name
        if e.hub:
            assert COMMIT.match(e.hub.revision), f"{e.name}: revision {e.hub.revision} is not a commit"
    f2 = entries["farslip2-vit-b-16"]
    assert (f2.hub.repo, f2.hub.file, f2.arch, f2.context_length, f2.quick_gelu) == \
        ("ZhenShiL/FarSLIP", "FarSLIP2_ViT-B-16.pt", "ViT-B-16", 248, True)
    assert f2.paper == {"farslip-ovss": 35.41, "farslip-zsc": 62.24}
    assert entries["georsclip-vit-h-14"].quick_gelu is False  # LAION lineage, the exception
    assert not entries["skyclip-vit-l-14"].downloadable


def test_per_set_numbers_average_to_the_published_means():
    checked = 0
    for e in registry.all_entries().values():
        for protocol, per_set in e.paper_sets.items():
            if protocol in ("farslip-retrieval-i2t", "farslip-retrieval-t2i"):  # the paper gives no mean
                assert list(per_set) == ["RSICD", "RSITMD", "UCM-captions"], (e.name, protocol)
                continue
            assert len(per_set) == 8, (e.name, protocol)
            assert abs(sum(per_set.values()) / len(per_set) - e.paper[protocol]) < 0.01, (e.name, protocol)
            checked += 1
    # the paper's OVSS and classification tables: FarSLIP stages 1 and 2 (ViT-B/32, ViT-B/16), OpenAI CLIP
    # (both), RemoteCLIP and GeoRSCLIP ViT-B/32 -- the OVSS per-set rows of the three ViT-B/16 models among them
    assert checked == 16


def test_table_and_info_describe_the_entries():
    table = registry.format_table()
    lines = table.splitlines()
    assert lines[0].startswith("| name") and set(lines[1]) <= {"|", "-"}
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    assert any(ln.startswith("| farslip2-vit-b-16 ") and "QuickGELU" in ln and "248" in ln for ln in lines)
    info = registry.describe(registry.get_entry("FarSLIP2-ViT-B-16"))  # names are case-insensitive
    for fact in ("ZhenShiL/FarSLIP", "FarSLIP2_ViT-B-16.pt", "e887b57f", "35.41", "farslip-ovss", "@article{li2025",
                 "iSAID 18.67"):
        assert fact in info
    assert "not on a hub" in registry.describe(registry.get_entry("skyclip-vit-b-32"))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(registry.RegistryError, match="farslip2-vit-b-16"):
        registry.get_entry("farslip3")
    assert registry.find_entry("runs/ckpt.pt") is None


def test_registry_file_from_the_environment(tmp_path, monkeypatch):
    good = tmp_path / "lab.yaml"
    good.write_text("models:\n  lab-b16:\n    arch: ViT-B-16\n    quick_gelu: true\n"
                    "    hub: {repo: lab/clip, file: m.pt, revision: main}\n")
    monkeypatch.setenv(registry.ENV_REGISTRY, str(good))
    assert registry.get_entry("lab-b16").hub.repo == "lab/clip"
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  lab-b16:\n    arch: ViT-B-16\n    quick_gelu: true\n    colour: red\n"
                   "    hub: {repo: lab/clip, file: m.pt}\n")
    monkeypatch.setenv(registry.ENV_REGISTRY, str(bad))
    with pytest.raises(registry.RegistryError, match=r"bad\.yaml: model 'lab-b16': unknown field\(s\) colour"):
        registry.all_entries()


def test_manual_release_explains_how_to_get_it():
    with pytest.raises(ModelUnavailableError, match=r"not on a model hub: download https://.*SkyCLIP_ViT_B32.*"
                                                    r"--no-quick-gelu"):
        farslip.load_model("skyclip-vit-b-32")


# ----------------------------------------------------------------------------------------------------------------
# Loading by name through the (fake) hub

def test_load_by_name_downloads_caches_and_loads(tiny_on_hub, fake_hub):
    original, entry = tiny_on_hub
    model, _, _, tokenizer = farslip.load_model("tiny-hub")
    assert _same_embeddings(model, original)
    assert model.farslip_arch == "Test-Tiny-ViT" and model.farslip_name == "tiny-hub"
    assert ("GET", f"/farslip-test/tiny/resolve/{entry.hub.revision}/weights/tiny.pt") in fake_hub.requests
    blobs = list((fake_hub.cache / "models--farslip-test--tiny" / "blobs").iterdir())
    assert [b.name for b in blobs] == [entry.hub.sha256]  # huggingface_hub's cache, content-addressed
    # Second load: from the cache, no request at all (the revision is a pinned commit).
    seen = len(fake_hub.requests)
    again, *_ = farslip.load_model(checkpoint="tiny-hub")
    assert len(fake_hub.requests) == seen and _same_embeddings(again, original)


def test_pinned_revision_is_what_loads(tiny_on_hub, fake_hub, tiny_state):
    original, entry = tiny_on_hub
    other, *_ = farslip.load_model("Test-Tiny-ViT")  # fresh random weights
    buf = __import__("io").BytesIO()
    torch.save(other.state_dict(), buf)
    fake_hub.add_file("farslip-test/tiny", "weights/tiny.pt", buf.getvalue())  # a later push to main
    model, *_ = farslip.load_model("tiny-hub")
    assert _same_embeddings(model, original) and not _same_embeddings(model, other)


def test_offline_from_a_prefilled_cache(tiny_on_hub, fake_hub, monkeypatch):
    from huggingface_hub import constants

    original, entry = tiny_on_hub
    fetch_weights(entry)  # fills the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    seen = len(fake_hub.requests)
    model, *_ = farslip.load_model("tiny-hub")
    assert _same_embeddings(model, original) and len(fake_hub.requests) == seen


def test_offline_without_cache_is_one_clear_message(tiny_on_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match=r"tiny-hub: farslip-test/tiny/weights/tiny.pt .* is not in the "
                                                    r"local Hugging Face cache .*HF_HUB_OFFLINE is set.*--checkpoint FILE"):
        farslip.load_model("tiny-hub")


@pytest.mark.parametrize("where", ["refused", "unknown-host"])
def test_no_network_is_one_clear_message_at_once(tiny_on_hub, monkeypatch, where):
    """No network and the weights not cached: the message comes from one quick look at the hub's host, not after
    huggingface_hub's ~30 s of retried requests (the download is never started)."""
    import socket

    import huggingface_hub
    from huggingface_hub import constants

    if where == "refused":
        with socket.socket() as s:  # a port nobody listens on: connection refused, as with no network
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        dead = "https://hub.farslip-offline.invalid"  # .invalid never resolves (RFC 2606), as without DNS
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted (and retried) although the hub cannot be reached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    with pytest.raises(ModelUnavailableError, match="hub cannot be reached"):
        farslip.load_model("tiny-hub")


def test_a_cached_file_loads_without_looking_at_the_network(tiny_on_hub, fake_hub, monkeypatch):
    import farslip.models.hub as hub

    original, entry = tiny_on_hub
    fetch_weights(entry)  # fills the cache
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("the network was probed for a cached file"))
    assert fetch_weights(entry).is_file()


def test_sha256_mismatch_is_refused(fake_hub, tiny_state):
    _, data, _ = tiny_state
    commit = fake_hub.add_file("farslip-test/tiny", "weights/tiny.pt", data)
    entry = registry.register_entry("tiny-bad", arch="Test-Tiny-ViT", quick_gelu=True,
                                    hub={"repo": "farslip-test/tiny", "file": "weights/tiny.pt", "revision": commit,
                                         "sha256": "0" * 64})
    try:
        with pytest.raises(ModelUnavailableError, match="the registry expects 0000"):
            fetch_weights(entry)
    finally:
        registry.unregister_entry("tiny-bad")


def test_missing_file_and_revision_name_the_problem(fake_hub, tiny_state):
    fake_hub.add_file("farslip-test/tiny", "weights/tiny.pt", tiny_state[1])
    for hub, message in ((dict(file="weights/nope.pt", revision="main"), "no such file in the repository"),
                         (dict(file="weights/tiny.pt", revision="f" * 40), "revision not found")):
        entry = registry.register_entry("tiny-x", arch="Test-Tiny-ViT", quick_gelu=True,
                                        hub={"repo": "farslip-test/tiny", **hub})
        with pytest.raises(ModelUnavailableError, match=message):
            fetch_weights(entry)
    registry.unregister_entry("tiny-x")


def test_interrupted_download_resumes(tiny_on_hub, fake_hub, monkeypatch):
    from huggingface_hub import constants

    original, entry = tiny_on_hub
    chunk = 1 << 16  # the client writes whole chunks; small ones so that a cut file leaves some on disk
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", chunk)
    size = len(fake_hub.file("farslip-test/tiny", "weights/tiny.pt"))
    cut = (size // 2 // chunk) * chunk
    fake_hub.cut_next_download_at = cut  # the connection drops half-way through the file
    model, *_ = farslip.load_model("tiny-hub")
    assert _same_embeddings(model, original)
    assert fake_hub.ranges == [f"bytes={cut}-"]  # only the rest was asked for again


def test_a_resnet_clip_is_described_and_refused_dense_features_in_one_line():
    """RemoteCLIP RN50 is in the registry: its weights have no ViT positional embedding, and dense features (segment,
    OVSS) say plainly that they need a ViT."""
    from torch import nn

    from farslip.core.errors import UsageError
    from farslip.models import describe_state_dict

    facts = describe_state_dict({"visual.conv1.weight": torch.zeros(32, 3, 3, 3),
                                 "visual.layer1.0.conv1.weight": torch.zeros(64, 32, 1, 1),
                                 "token_embedding.weight": torch.zeros(49408, 512),
                                 "positional_embedding": torch.zeros(77, 512), "text_projection": torch.zeros(512, 1024)})
    assert facts["context_length"] == 77 and "image_size" not in facts

    class ModifiedResNet(nn.Module):  # what matters: a conv1 but no class embedding or transformer
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3)

    class ResNetCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = ModifiedResNet()

    with pytest.raises(UsageError, match="ModifiedResNet .*need a ViT model"):
        farslip.dense_features(ResNetCLIP(), torch.zeros(1, 3, 32, 32))
