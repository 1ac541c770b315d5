"""Elastic resume of the data: a run continued on another number of processes (or loader workers, or another
batch size) trains on the rest of its epoch -- every sample once -- for map-style sets and for shard streams."""
from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from farslip.data import ViewConfig
from farslip.data.loader import LoaderConfig, TrainLoader

VIEWS = ViewConfig(size=16, views="none")


@pytest.fixture(scope="module")
def tok():
    return open_clip.get_tokenizer("Test-Tiny-ViT")


def _jpeg(rng) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """4 shards of 8 samples, each captioned with its own name."""
    folder = tmp_path_factory.mktemp("elastic_shards")
    rng = np.random.default_rng(0)
    for s in range(4):
        with tarfile.open(folder / f"e-{s:04d}.tar", "w") as tar:
            for i in range(8):
                for ext, data in (("jpg", _jpeg(rng)), ("txt", f"shard {s} sample {i}".encode())):
                    info = tarfile.TarInfo(f"e{s}_{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return f"{folder}/e-{{0000..0003}}.tar"


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("elastic_csv")
    rng = np.random.default_rng(0)
    rows = ["filepath,title"]
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,row {i}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def _loaders(cfg: LoaderConfig, tok, world: int, batch: int = 2) -> list[TrainLoader]:
    return [TrainLoader(cfg, VIEWS, tok, batch_size=batch, rank=r, world=world) for r in range(world)]


def _take(loaders: list[TrainLoader], steps: int | None, tok) -> list[str]:
    """Captions of ``steps`` lock-step batches of every rank in its current epoch (all of it when None)."""
    seen, iters = [], [iter(lo.epoch(lo.state_dict()["epoch"])) for lo in loaders]
    epoch = loaders[0].state_dict()["epoch"]
    n = 0
    while steps is None or n < steps:
        batches = [next(it, None) for it in iters]
        if any(b is None for b in batches) or loaders[0].state_dict()["epoch"] != epoch:
            assert all(b is None for b in batches), "ranks took different numbers of steps"
            break
        for lo, b in zip(loaders, batches):
            lo.advance(b)
            seen += [tok.decode(row.tolist()).strip() for row in b["texts"]]
        n += 1
    return seen


def _continue(old: list[TrainLoader], cfg: LoaderConfig, tok, world: int, workers: int, batch: int = 2):
    """New loaders on ``world`` ranks from the old ranks' states, as a checkpoint carries them."""
    states = []
    for lo in old:
        buf = io.BytesIO()
        torch.save(lo.state_dict(), buf)
        states.append(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    new = _loaders(cfg, tok, world, batch)
    for lo in new:
        lo.load_elastic_state(states, workers)
    return new


@pytest.mark.parametrize("kind", ["csv", "webdataset"])
def test_two_to_one_to_two_sees_every_sample_of_the_epoch_once(kind, shards, table, tok):
    words = _Words(tok)
    cfg = (LoaderConfig("csv", str(table), workers=0) if kind == "csv"
           else LoaderConfig("webdataset", shards, workers=0, shuffle_buffer=4, shuffle_initial=2))
    total = 20 if kind == "csv" else 32
    two = _loaders(cfg, tok, 2)
    seen = _take(two, 2, words)                            # 2 ranks x 2 steps x 2 samples
    one = _continue(two, cfg, tok, 1, workers=0)
    seen += _take(one, 3, words)                           # then 1 rank for 3 steps
    again = _continue(one, cfg, tok, 2, workers=0)
    rest = _take(again, None, words)                       # and 2 ranks to the end of the epoch
    seen += rest
    counts = Counter(seen)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    assert total - len(counts) < 2 * 2                     # at most the last partial global batch is left out
    assert again[0].state_dict()["epoch"] == 1             # the next epoch is a whole one on the new ranks
    assert len(_take(again, None, words)) == total


def test_a_stream_re_dealt_to_more_loader_workers(shards, tok):
    words = _Words(tok)
    cfg = LoaderConfig("webdataset", shards, workers=0, shuffle_buffer=4, shuffle_initial=2)
    one = _loaders(cfg, tok, 1)
    seen = _take(one, 5, words)
    wide = LoaderConfig("webdataset", shards, workers=2, shuffle_buffer=4, shuffle_initial=2)
    two = _continue(one, wide, tok, 2, workers=0)
    seen += _take(two, None, words)
    counts = Counter(seen)
    assert max(counts.values()) == 1 and 32 - len(counts) < 4


def test_a_changed_batch_size_goes_on_from_the_samples_trained(table, tok):
    words = _Words(tok)
    cfg = LoaderConfig("csv", str(table), workers=0)
    small = _loaders(cfg, tok, 1, batch=2)
    seen = _take(small, 3, words)
    large = _continue(small, cfg, tok, 1, workers=0, batch=4)
    assert large[0].epoch_steps() == (20 - 6) // 4
    seen += _take(large, None, words)
    assert len(seen) == len(set(seen)) == 6 + 12


class _Words:
    """Token rows back to the caption text (the tests' tokenizer pads with zeros)."""

    def __init__(self, tok):
        self.tok = tok

    def decode(self, ids):
        return open_clip.decode(torch.tensor([i for i in ids if i])).replace("<start_of_text>", "").replace(
            "<end_of_text>", "").strip()
