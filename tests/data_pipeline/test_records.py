"""MGRS records: which caption each trains on and which are skipped, under each caption rule; the map-style order."""
from __future__ import annotations

import pytest

from farslip.core.problems import BadInput
from farslip.data import MGRSRecords

from .test_shards import maker


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    return maker("mgrs_quirky")(tmp_path_factory.mktemp("mgrs"), caption_quirks=True)


def captions(path, rule: str) -> dict[int, str | None]:
    records = MGRSRecords(path, caption=rule)
    out = {}
    for i in range(len(records)):
        try:
            out[i] = records[i].caption
        except BadInput as exc:
            field = exc.problem.field
            out[i] = None if field == "caption" else f"skipped: {field}"
    return out


def test_official_rule_is_global_else_detailed(quirky):
    """open_clip_train/data.py at HEAD: ``item.get("global_caption") or item.get("detailed_caption")``."""
    got = captions(quirky, "official")
    assert got[0].startswith("a satellite image with")     # global caption present: it wins
    assert got[15] == "detailed only 15"                   # empty global caption -> detailed
    assert got[16] == "detailed only 16"                   # no global caption -> detailed
    assert got[17] is None                                 # only a brief caption: skipped (officially a crash)
    assert got[14] is None                                 # no caption at all
    assert got[18] == "detailed 18"                        # blank global caption -> detailed (see docs/data.md)
    assert got[12] == "a corrupt image" and got[13] == "skipped: global_filepath"


def test_an_object_with_a_caption_is_known_by_it(quirky):
    """open_clip_train/data.py: ``if 'cap' in segment`` -> the caption, label -1 (even when a category is given)."""
    (obj,) = MGRSRecords(quirky)[15].objects
    assert (obj.category, obj.category_id, obj.caption) == (None, -1, "a red ship")


def test_first_commit_rule_is_global_else_brief(quirky):
    got = captions(quirky, "official_first_commit")
    assert got[15] == "brief 15" and got[16] is None and got[17] == "brief only 17"
    assert got[0].startswith("a satellite image with")


def test_the_other_rules(quirky):
    detailed, brief = captions(quirky, "detailed"), captions(quirky, "brief")
    assert detailed[0].startswith("a detailed description") and detailed[17] == "brief only 17"
    assert brief[0] == "scene 0" and brief[16] == "detailed only 16"
    with pytest.raises(ValueError, match="caption must be one of"):
        MGRSRecords(quirky, caption="longest")


def test_map_style_order_is_the_official_distributed_samplers():
    """get_json_dataset: DistributedSampler(dataset) (seed 0, set_epoch), DataLoader(drop_last=True)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from farslip.data.loader import EpochBatchSampler

    n, batch = 23, 4
    for world in (1, 2, 3):
        for rank in range(world):
            ours = EpochBatchSampler(n, batch, rank, world, seed=0)
            official = DistributedSampler(list(range(n)), num_replicas=world, rank=rank)
            for epoch in (0, 1):
                ours.set_epoch(epoch)
                official.set_epoch(epoch)
                expected = [b.tolist() for b in DataLoader(list(range(n)), batch, sampler=official, drop_last=True)]
                assert [[i for _, i in b] for b in ours] == expected
                ours.set_epoch(epoch, start_batch=1)  # a resumed epoch: the same batches from the second on
                assert [[i for _, i in b] for b in ours] == expected[1:]


def test_undecodable_shard_image_names_the_sample_not_a_python_object():
    """A corrupt image inside a shard: one line with the shard, the sample and the byte count -- no object repr."""
    from farslip.core.problems import BadInput
    from farslip.data.records import Record, open_rgb

    rec = Record(source="shard-000003.tar", key="sample 000042", caption="x", image_bytes=b"not a jpeg")
    with pytest.raises(BadInput) as info:
        open_rgb(rec)
    text = str(info.value)
    assert "shard-000003.tar" in text and "sample 000042" in text and "(10 encoded bytes)" in text
    assert "BytesIO" not in text and "0x" not in text
