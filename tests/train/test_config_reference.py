"""docs/config.md is the reference generated from the config dataclasses and the key table: every key documented,
no key invented, the page equal to what the code generates."""
from __future__ import annotations

from farslip.train.reference import KEYS, RESUME_CLASSES, config_keys, render_reference

from support.fixtures import REPO


def test_every_config_key_is_documented_and_every_documented_key_exists():
    keys = config_keys()
    assert sorted(set(keys) - set(KEYS)) == [], "config keys without an entry in farslip/train/reference.py KEYS"
    assert sorted(set(KEYS) - set(keys)) == [], "KEYS entries for keys the config does not have"
    assert all(doc.help and doc.resume in RESUME_CLASSES for doc in KEYS.values())


def test_docs_config_md_is_the_generated_reference():
    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == render_reference(), ("docs/config.md is stale; regenerate it: python -c \"from "
                                        "farslip.train.reference import main; main(['docs/config.md'])\"")
    for key in config_keys():
        assert f"`{key}`" in page
