"""SAM 3 checkpoints: the official sam3.pt (its names mapped to transformers'), the Hub's transformers files, the
registry name through the Hub -- and the official code's own outputs reproduced (tests/data/sam3_official)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from farslip.engine.sam3 import encode_prompts, ground, sam3_pixels
from farslip.models.checkpoint_io import CheckpointError
from farslip.models.sam3 import (Sam3CheckpointError, load_sam3, official_to_transformers, random_sam3, sam3_config,
                                 sam3_tokenizer, split_checkpoint)
from support.sam3 import one_thread  # noqa: F401 (fixture)
from support.sam3 import OFFICIAL, official_module, official_state, tiny_config_json, write_official_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _official_outputs():
    return np.load(OFFICIAL / "expected.npz")


def _grounded(model):
    expected = _official_outputs()
    prompts = encode_prompts(model, sam3_tokenizer(), official_module().PROMPTS)
    pixels = sam3_pixels([torch.from_numpy(expected["window"]).permute(2, 0, 1)], 112)
    with torch.no_grad():
        return ground(model, model.get_vision_features(pixel_values=pixels), prompts)


def test_official_checkpoint_reproduces_the_official_code(tmp_path):
    """sam3.pt's names mapped to transformers' and the geometry CLS token added to each prompt: the official
    model's logits, boxes, masks, presence and semantic map, both prompts in one decoder batch."""
    model, source = load_sam3(write_official_checkpoint(tmp_path))
    assert source.form == "official"
    g = _grounded(model)
    expected = _official_outputs()
    for i in range(2):
        for name, got in (("logits", g.logits[i]), ("boxes", g.boxes[i]), ("masks", g.masks[i]),
                          ("presence", g.presence[i:i + 1]), ("semantic", g.semantic[i])):
            want = torch.from_numpy(expected[f"{name}{i}"])
            assert torch.allclose(got, want, atol=1e-3, rtol=1e-4), (name, i, (got - want).abs().max())


def test_transformers_text_path_alone_is_not_the_official_model(tmp_path):
    """Why ground() adds the geometry CLS token: without it (Sam3Model.forward with text only) the outputs move."""
    model, _ = load_sam3(write_official_checkpoint(tmp_path))
    expected = _official_outputs()
    tok = sam3_tokenizer()
    ids = tok(official_module().PROMPTS[:1])
    pixels = sam3_pixels([torch.from_numpy(expected["window"]).permute(2, 0, 1)], 112)
    with torch.no_grad():
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=(ids != 0).long())
    assert (out.pred_logits[0] - torch.from_numpy(expected["logits0"])).abs().max() > 1e-2


def test_every_official_name_maps_onto_the_model():
    form, state = split_checkpoint(official_state())
    assert form == "official" and not any(k.startswith("tracker.") for k in state)
    mapped = official_to_transformers(state)
    with torch.device("meta"):
        from transformers import Sam3Model

        expected = {k: tuple(v.shape) for k, v in Sam3Model(sam3_config(json.loads(tiny_config_json()))).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected


@pytest.mark.parametrize("form", ["safetensors-official", "hub-folder", "hub-file"])
def test_other_forms_load_the_same_weights(tmp_path, form):
    reference, _ = load_sam3(write_official_checkpoint(tmp_path / "pt"))
    if form == "safetensors-official":
        path = write_official_checkpoint(tmp_path / "st", "sam3.safetensors")
    else:
        reference.save_pretrained(tmp_path / "hub")  # config.json + model.safetensors, as on the Hub
        path = tmp_path / "hub" if form == "hub-folder" else tmp_path / "hub" / "model.safetensors"
    model, source = load_sam3(path)
    assert source.form == ("official" if form == "safetensors-official" else "transformers")
    for (k, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_hub_prefix_of_the_video_checkpoint_is_read(tmp_path):
    """facebook/sam3's model.safetensors holds the video model: the detector under detector_model.*, the tracker
    beside it; its config.json is a sam3_video config with the detector's inside."""
    from safetensors.torch import save_file

    reference = random_sam3("tiny", seed=3)
    state = {f"detector_model.{k}": v.contiguous() for k, v in reference.state_dict().items()}
    state["tracker_model.no_memory_embedding"] = torch.zeros(1, 1, 4)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam3_video",
                                                      "detector_config": json.loads(tiny_config_json())}))
    model, source = load_sam3(tmp_path)
    assert source.form == "transformers"
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values()))


def test_a_checkpoint_of_another_size_without_its_config_is_refused(tmp_path):
    path = write_official_checkpoint(tmp_path, config=False)
    with pytest.raises(Sam3CheckpointError, match="config.json beside the file"):
        load_sam3(path)


def test_a_clip_checkpoint_is_not_sam3(tmp_path, tiny_model):
    model, _, _ = tiny_model
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    with pytest.raises(Sam3CheckpointError, match="not a SAM 3 checkpoint"):
        load_sam3(tmp_path / "clip.pt")


def test_pickled_code_is_not_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickled code ran')",))

    torch.save({"detector.backbone.vision_backbone.trunk.pos_embed": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        load_sam3(tmp_path / "evil.pt")


def test_registry_name_through_the_hub_and_its_errors(fake_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    reference = random_sam3("tiny", seed=4)
    reference.save_pretrained(tmp_path / "hub")
    fake_hub.commit("facebook/sam3", {f: (tmp_path / "hub" / f).read_bytes()
                                      for f in ("config.json", "model.safetensors")})
    model, source = load_sam3("sam3")
    assert source.name == "sam3"
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values()))

    fake_hub.gated.add("facebook/sam3")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(Sam3CheckpointError, match="gated"):
        load_sam3("sam3")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(Sam3CheckpointError, match="not in the local Hugging Face cache"):
        load_sam3("sam3")


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(Sam3CheckpointError, match="no such file"):
        load_sam3(tmp_path / "nope.pt")
