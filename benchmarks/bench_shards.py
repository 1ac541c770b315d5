#!/usr/bin/env python
"""Webdataset shards: bytes read per epoch by all loader roles, and shard reading speed.

    .venv/bin/python benchmarks/bench_shards.py [--samples 600] [--image-kb 24]

Bytes: for a set of shards and R = ranks x workers roles, every role reads its share of one epoch through a
counting file opener. "pieces" is farslip's dealing (whole shards, or byte-range pieces with fewer than two
shards per role); "every role" is dealing samples by index (each role reads every shard and keeps one sample in
R), counted as each shard's bytes read once times the roles that read it.
Speed: one shard read end to end by webdataset's tar iterator (what the official pipeline uses) and by farslip's
piece reader. Results are printed as a table; docs/data.md records a run.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from farslip.data.shards import (
    Piece,
    deal,
    pieces_per_shard,
    read_piece,
    shuffled_shards,
)


class Counter:
    def __init__(self):
        self.bytes = 0

    def __call__(self, path):
        counter = self

        class Counted(io.FileIO):
            def read(self, n=-1):
                data = super().read(n)
                counter.bytes += len(data)
                return data

            def readinto(self, b):
                n = super().readinto(b)
                counter.bytes += n or 0
                return n

        return Counted(path, "rb")


def write_shards(folder: Path, num: int, samples: int, image_kb: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for s in range(num):
        path = folder / f"bench-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(samples):
                for ext, data in (("img_content", rng.bytes(image_kb * 1024)), ("img_name", b"x.jpg"),
                                  ("caption", f"sample {s} {i}".encode())):
                    info = tarfile.TarInfo(f"s{s}_{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def epoch_bytes(shards: list[str], roles: int, samples: int) -> tuple[int, int]:
    sizes = {u: os.path.getsize(u) for u in shards}
    splits = dict(zip(shards, pieces_per_shard(len(shards), roles, sum(sizes.values()), samples,
                                               list(sizes.values())), strict=True))
    if sum(splits.values()) < roles:
        return -1, -1
    new = Counter()
    order = shuffled_shards(shards, 0, 0)
    for role in range(roles):
        for piece in deal(order, sizes, splits, role, roles):
            for _ in read_piece(piece, opener=new):
                pass
    once = {}  # bytes of one whole read of each shard, counted the same way
    for url in shards:
        counter = Counter()
        for _ in read_piece(Piece(url, 0, 1, sizes[url]), opener=counter):
            pass
        once[url] = counter.bytes
    every_role = sum(once[url] for role in range(roles)
              for url in (order[role::roles] if len(shards) >= 2 * roles else order))
    return new.bytes, every_role


def read_speed(url: str) -> tuple[float, float]:
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def official():
        with open(url, "rb") as f:
            def files():
                for sample in tar_file_iterator(f):
                    sample["__url__"] = url
                    yield sample
            return sum(1 for _ in group_by_keys(files()))

    def farslip():
        return sum(1 for _ in read_piece(Piece(url, 0, 1, os.path.getsize(url))))

    times = {}
    for fn in (official, farslip) * 3:
        t = time.perf_counter()
        fn()
        times.setdefault(fn.__name__, []).append(time.perf_counter() - t)
    return min(times["official"]), min(times["farslip"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=600, help="samples per shard")
    p.add_argument("--image-kb", type=int, default=24, help="image member size")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), 16, args.samples, args.image_kb)
        print("| shards | roles | pieces: bytes / data | every role reads every shard |")
        print("|---:|---:|---:|---:|")
        for num in (1, 4, 16):
            total = sum(os.path.getsize(u) for u in shards[:num])
            for roles in (2, 8, 32, 128):
                new, every_role = epoch_bytes(shards[:num], roles, num * args.samples)
                if new < 0:
                    print(f"| {num} | {roles} | (too few samples per role: refused) | |")
                    continue
                print(f"| {num} | {roles} | {new / total:.3f} | {every_role / total:.2f} |")
        official, farslip = read_speed(shards[0])
        mb = os.path.getsize(shards[0]) / 2 ** 20
        print(f"\none shard ({mb:.0f} MiB): webdataset tar iterator {mb / official:.0f} MiB/s, "
              f"farslip piece reader {mb / farslip:.0f} MiB/s (ratio {official / farslip:.2f})")


if __name__ == "__main__":
    main()
