"""Shards read in byte-range pieces, dealt to loader roles: every sample once, bytes read within 2x the data."""
from __future__ import annotations

import os
import random

import pytest
from support.fixtures import fixture_module
from webdataset.filters import _shuffle

from farslip.data.shards import (
    SHARD_SHUFFLE_INITIAL,
    SHARD_SHUFFLE_SIZE,
    BufferedShuffle,
    Piece,
    deal,
    pieces_per_shard,
    read_piece,
    replay_shuffle,
    shard_records,
    shuffled_shards,
)


def maker(name: str, function: str = "make"):
    return getattr(fixture_module(name), function)


class CountingOpener:
    """Opens shards unbuffered and counts every byte read through them (seeks read nothing)."""

    def __init__(self):
        self.bytes = 0

    def __call__(self, path):
        opener = self

        class Counted:
            def __init__(self):
                self.f = open(path, "rb", buffering=0)  # noqa: SIM115 -- closed by __exit__, as a shard opener is

            def read(self, n=-1):
                data = self.f.read(n)
                opener.bytes += len(data)
                return data

            def readinto(self, b):
                n = self.f.readinto(b)
                opener.bytes += n or 0
                return n

            def seek(self, *a):
                return self.f.seek(*a)

            def tell(self):
                return self.f.tell()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        return Counted()


def keys(records):
    return [r.where for r in records]


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    return [str(p) for p in maker("rs5m_shards", "make_varied")(tmp_path_factory.mktemp("varied"), 5)]


def test_buffered_shuffle_is_webdatasets(varied):
    for bufsize, initial, n in ((5000, 1000, 300), (10, 4, 57), (1, 1, 9), (7, 7, 3)):
        mine = list(BufferedShuffle(bufsize, initial, random.Random(3)).run(iter(range(n))))
        assert mine == list(_shuffle(iter(range(n)), bufsize, initial, random.Random(3)))
    # The official epoch order of the shards: detshuffle2(2000, 500) seeded with seed + epoch.
    for epoch in range(3):
        official = list(_shuffle(iter(varied), SHARD_SHUFFLE_SIZE, SHARD_SHUFFLE_INITIAL, random.Random(7 + epoch)))
        assert shuffled_shards(varied, 7, epoch) == official
    assert shuffled_shards(varied, 7, 0) != shuffled_shards(varied, 7, 1)


@pytest.mark.parametrize("length", [None, 40])
def test_replayed_shuffle_stands_where_the_live_one_stood(length):
    for drawn in (0, 1, 5, 17, 39):
        live = BufferedShuffle(12, 5, random.Random(11))
        source = iter(range(length)) if length else iter(range(10 ** 6))
        stream = live.run(source)
        for _ in range(drawn):
            next(stream)
        replayed, next_item = replay_shuffle(12, 5, random.Random(11), drawn, length)
        assert replayed.buf == live.buf and replayed.rng.getstate() == live.rng.getstate()
        assert next_item == next(source, length)


def test_pieces_cover_a_shard_exactly_once(varied):
    for url in varied:
        whole = keys(shard_records(url))
        assert len(whole) >= 20 and len(set(whole)) == len(whole)
        assert any(len(k) > 100 for k in whole)  # extension headers are exercised
        size = os.path.getsize(url)
        for count in (1, 2, 3, 5, 8, 13):
            parts = [keys(rec for _, rec in read_piece(Piece(url, j, count, size))) for j in range(count)]
            assert [k for part in parts for k in part] == whole, f"{url} in {count} pieces"


def test_a_piece_skips_unwanted_data_and_numbers_its_samples(varied):
    url = varied[0]
    size = os.path.getsize(url)
    one, every = CountingOpener(), CountingOpener()
    got = list(read_piece(Piece(url, 1, 3, size), want=lambda i: i == 2, opener=one))
    assert [i for i, _ in got] == list(range(len(got)))
    assert [i for i, rec in got if rec is not None] == [2]
    assert [r.where for _, r in read_piece(Piece(url, 1, 3, size), opener=every)][2] == got[2][1].where
    # the headers are read either way (most of these tiny samples' bytes); the other samples' data is not
    data = sum(len(rec.image_bytes) + len(rec.caption) for _, rec in read_piece(Piece(url, 1, 3, size)))
    assert one.bytes <= every.bytes - 0.8 * data * (len(got) - 1) / len(got)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
def test_dealing_reads_every_sample_once_and_bytes_within_twice_the_data(varied, num_shards):
    shards = varied[:num_shards]
    sizes = {u: os.path.getsize(u) for u in shards}
    total = sum(sizes.values())
    samples = sum(1 for u in shards for _ in shard_records(u))
    everything = sorted(k for u in shards for k in keys(shard_records(u)))
    for roles in (1, 2, 3, 4, 8, 16):
        splits = dict(zip(shards, pieces_per_shard(len(shards), roles, total, samples, list(sizes.values()))))
        if sum(splits.values()) < roles:  # the loader refuses this case with a message (too little data per role)
            continue
        opener = CountingOpener()
        order = shuffled_shards(shards, 0, 0)
        seen = []
        for role in range(roles):
            for piece in deal(order, sizes, splits, role, roles):
                seen += keys(rec for _, rec in read_piece(piece, opener=opener))
        assert sorted(seen) == everything, f"{num_shards} shards, {roles} roles"
        assert opener.bytes <= 2 * total, f"{num_shards} shards, {roles} roles: read {opener.bytes / total:.2f}x"
        # each shard is opened by a bounded number of roles: about two pieces per role, never all roles
        assert max(splits.values()) <= max(1, -(-2 * roles // num_shards))


def test_one_big_shard_dealt_to_many_roles(tmp_path):
    (url,) = [str(p) for p in maker("rs5m_shards", "make_varied")(tmp_path, 1, samples=(400, 401))]
    size = os.path.getsize(url)
    everything = sorted(keys(shard_records(url)))
    for roles in (32, 64):
        splits = {url: pieces_per_shard(1, roles, size, len(everything), [size])[0]}
        assert splits[url] >= roles
        opener = CountingOpener()
        seen = [k for role in range(roles) for piece in deal([url], {url: size}, splits, role, roles)
                for k in keys(rec for _, rec in read_piece(piece, opener=opener))]
        assert sorted(seen) == everything
        assert opener.bytes <= 2 * size, f"{roles} roles read {opener.bytes / size:.2f}x"


def test_compressed_shards_are_read_whole(varied, tmp_path):
    import gzip
    import shutil

    packed = tmp_path / "varied-0000.tar.gz"
    with open(varied[0], "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    url, size = str(packed), os.path.getsize(packed)
    whole = [(r.key, r.caption, r.image_bytes) for r in shard_records(url)]
    assert whole == [(r.key, r.caption, r.image_bytes) for r in shard_records(varied[0])]
    assert pieces_per_shard(1, 8, size, len(whole), [size], [True]) == [1]
    # cut anyway, its first piece reads it all and the others nothing: still every sample once
    parts = [keys(rec for _, rec in read_piece(Piece(url, j, 3, size))) for j in range(3)]
    assert parts[0] == keys(shard_records(url)) and parts[1] == parts[2] == []
