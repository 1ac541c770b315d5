"""The webdataset stream: shuffled shards and samples, seeded; exact resume from any batch; bytes read per epoch."""
from __future__ import annotations

import io
import os

import open_clip
import pytest
import torch

from farslip.core.errors import user_error_message
from farslip.data import ViewConfig
from farslip.data.loader import LoaderConfig, ShardStream, TrainLoader
from farslip.data.shards import expand_shards

from .test_shards import CountingOpener, maker

VIEWS = ViewConfig(size=16, views="crops", num_crops=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = maker("rs5m_shards")(tmp_path_factory.mktemp("rs5m"))
    return f"{folder}/{{pub11-train-{{0000..0001}},rs3-train-0000}}.tar"


@pytest.fixture(scope="module")
def tok():
    return open_clip.get_tokenizer("Test-Tiny-ViT")


def loader(shards, tok, workers=0, rank=0, world=1, seed=0, **data):
    cfg = LoaderConfig("webdataset", shards, workers=workers, **data)
    return TrainLoader(cfg, VIEWS, tok, batch_size=2, rank=rank, world=world, seed=seed)


def texts(batch) -> list[tuple]:
    return [tuple(row.tolist()) for row in batch["texts"]]


def run(make, epochs: int, stop_after: int | None = None) -> tuple[list[dict], dict]:
    """Batches of ``epochs`` epochs; with ``stop_after``, the loader is dropped after that many batches and a new
    one continues from the saved state (through torch.save and a weights_only load, as a checkpoint does)."""
    current, out, steps = make(), [], 0
    epoch = 0
    while epoch < epochs:
        for batch in current.epoch(epoch):
            out.append(batch)
            current.advance(batch)
            steps += 1
            if steps == stop_after:
                buf = io.BytesIO()
                torch.save(current.state_dict(), buf)
                current = make()
                current.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
                break
        else:
            epoch += 1
            continue
        epoch = current.state_dict()["epoch"]
    return out, current.state_dict()


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(texts(x) == texts(y) and torch.equal(x["images"], y["images"])
                                    and torch.equal(x["crop_images"], y["crop_images"]) for x, y in zip(a, b))


@pytest.mark.parametrize("buffer", [(5000, 1000), (4, 2)])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_the_same_samples_in_the_same_order(shards, tok, workers, buffer):
    make = lambda: loader(shards, tok, workers=workers, shuffle_buffer=buffer[0], shuffle_initial=buffer[1])
    whole, end = run(make, epochs=2)
    steps = make().steps_per_epoch
    assert len(whole) == 2 * steps and end["skipped_records"] == sum(len(b["skipped"]) for b in whole) > 0
    stops = (1, 3, steps - 1, steps, steps + 2) if workers == 0 else (3, steps + 1)
    for stop in stops:
        resumed, state = run(make, epochs=2, stop_after=stop)
        assert same(resumed, whole), f"resumed after batch {stop}"
        assert state == end


def test_ranks_resume_their_own_positions(shards, tok):
    for rank in range(2):
        make = lambda rank=rank: loader(shards, tok, rank=rank, world=2)
        whole, end = run(make, epochs=1)
        resumed, state = run(make, epochs=1, stop_after=2)
        assert same(resumed, whole) and state == end


def test_samples_are_shuffled_by_seed_and_epoch(shards, tok):
    def order(seed=0, **data):
        return [_captions(b) for b in run(lambda: loader(shards, tok, seed=seed, **data), epochs=2)[0]]

    plain, shuffled = order(shuffle_buffer=1), order()
    steps = len(shuffled) // 2
    assert order() == shuffled                                            # deterministic
    assert order(seed=1) != shuffled                                      # a function of the seed
    assert shuffled[:steps] != shuffled[steps:]                           # and of the epoch
    flat = [c for batch in shuffled[:steps] for c in batch]
    assert len(set(flat)) == len(flat) == 2 * steps                       # one epoch: each sample once
    # Without the sample buffer a batch holds neighbours of one shard; with it, batches mix the shards.
    assert all(len({_shard_of(c) for c in batch}) == 1 for batch in plain[:steps])
    assert sum(len({_shard_of(c) for c in batch}) > 1 for batch in shuffled[:steps]) >= steps // 3


def _captions(batch) -> list[str]:
    from open_clip.tokenizer import decode

    return [decode(row) for row in batch["texts"]]


def _shard_of(caption: str) -> str:
    return caption.split("region")[-1].strip() if "region" in caption else "rs3"


def test_an_epoch_reads_the_shards_about_once(shards, tok):
    urls = expand_shards(shards)
    total = sum(os.path.getsize(u) for u in urls)
    for world in (1, 2, 3):
        opener = CountingOpener()
        for rank in range(world):
            ref = loader(shards, tok, rank=rank, world=world)
            stream = ShardStream(urls, ref.dataset.views, tok, 2, ref.steps_per_epoch, rank, world, 0, 0,
                                 ref.num_samples, opener=opener)
            list(stream)
        assert opener.bytes <= 2 * total, f"{world} ranks read {opener.bytes / total:.2f}x the shards"


def test_too_little_data_for_the_roles_is_refused_with_advice(shards, tok):
    with pytest.raises(ValueError, match="too few.*data.workers to") as caught:
        loader(shards, tok, workers=8, world=2)
    assert user_error_message(caught.value) == str(caught.value)  # the CLI prints it as one line, exit 2
