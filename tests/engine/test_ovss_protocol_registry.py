"""The OVSS protocols as data: the official values, overrides, and what a result records."""
from __future__ import annotations

import pytest

from farslip.engine.protocols import DEFAULT_PROTOCOL, PROTOCOLS, OVSSProtocol, get_protocol


class _Dataset:  # the two fields a protocol reads of an OVSSDataset
    prob_threshold, background_index = 0.4, 4


def test_registered_values_are_the_official_ones():
    rs, se = PROTOCOLS["farslip"], PROTOCOLS["segearth"]
    # RS-OVSS CustomizedSegmentation defaults (eval_customized.py replaces each config's model settings)
    assert (rs.scale, rs.crop, rs.stride, rs.attn, rs.logit_scale) == (448, 224, 112, "segearth", 50.0)
    assert (rs.cls_lambda, rs.threshold, rs.window_to_model_size, rs.simfeatup) == (0.0, 0.0, True, None)
    assert rs.dataset_rule(_Dataset()) == (0.0, 4)          # the configs' prob_thd is not used
    # SegEarth-OV: base_config lambda -0.3, each cfg_*.py's prob_thd / bg_idx, windows at their own size
    assert (se.scale, se.crop, se.stride, se.cls_lambda, se.window_to_model_size) == (448, 224, 112, -0.3, False)
    assert se.dataset_rule(_Dataset()) == (0.4, 4)
    assert rs.half_model == se.half_model == "cuda"
    assert DEFAULT_PROTOCOL == "farslip" and get_protocol() is rs
    assert "RS-OVSS eval_customized.py" in rs.source and "SegEarth-OV segearth_segmentor.py" in se.source


def test_overrides_apply_to_registered_protocols_and_are_recorded():
    p = get_protocol("SegEarth", {"threshold": 0.25, "cls_lambda": None, "stride": 56, "scale": 0})
    assert (p.name, p.threshold, p.cls_lambda, p.stride, p.scale) == ("segearth", 0.25, -0.3, 56, None)
    assert p.dataset_rule(_Dataset()) == (0.25, 4)
    settings = p.settings()
    assert settings["overridden"] == ["scale", "stride", "threshold"]
    assert settings["threshold"] == 0.25 and settings["source"] == PROTOCOLS["segearth"].source
    assert "overridden: scale, stride, threshold" in p.describe()
    back = get_protocol("farslip", {"threshold": "dataset"})
    assert back.threshold is None and back.dataset_rule(_Dataset()) == (0.4, 4)
    assert get_protocol("farslip").settings()["overridden"] == []
    custom = OVSSProtocol("mine", crop=336, stride=168)
    assert get_protocol(custom) is custom and custom.settings()["overridden"] == []


def test_bad_protocol_names_and_values_say_what_is_known():
    with pytest.raises(ValueError, match="unknown OVSS protocol 'paper'; known: farslip, segearth"):
        get_protocol("paper")
    with pytest.raises(ValueError, match="unknown OVSS protocol setting.*lamda"):
        get_protocol("farslip", {"lamda": 0.1})
    with pytest.raises(ValueError, match="attn must be one of"):
        get_protocol("farslip", {"attn": "gem"})
    with pytest.raises(ValueError, match="half_model must be one of"):
        get_protocol("farslip", {"half_model": "yes"})
    with pytest.raises(ValueError, match="crop and stride must be positive"):
        get_protocol("farslip", {"stride": -1})
