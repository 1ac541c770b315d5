"""Batches for training: map-style sources (MGRS JSON, CSV) and streamed shards (webdataset), with exact resume.

Both paths yield the batch dict of ``batch.py`` plus bookkeeping: ``skipped`` (records that could not be used,
each naming file/record/field), ``notes`` (object-level fixes: clipped or dropped boxes) and, for streams,
``cursor`` (how far the producing worker has read, so a checkpoint can resume mid-epoch exactly).
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..core.problems import BadInput
from .records import CaptionCSVRecords, MGRSRecords, Record, expand_shards, open_rgb, shard_records
from .views import ViewConfig, ViewMaker, sample_seed

MAX_CONSECUTIVE_BAD = 1000


@dataclass
class LoaderConfig:
    kind: str                         # mgrs | csv | webdataset
    train: str | list                 # JSON file, CSV file, or shard spec(s)
    image_root: str | None = None
    caption: str = "official"         # MGRS caption choice (official | global | detailed | brief)
    image_key: str = "filepath"       # CSV columns
    caption_key: str = "title"
    csv_sep: str = ","
    num_samples: int | None = None    # webdataset: samples per epoch (counted from the shards if not given)
    workers: int = 4


# ----------------------------------------------------------------------------------------------------------------

def collate(samples: list[dict], tokenizer: Callable) -> dict:
    """Stack views and tokenize texts; keep the skip/notes bookkeeping."""
    batch = {"images": torch.stack([s["images"] for s in samples]),
             "texts": tokenizer([s["caption"] for s in samples])}
    for key in ("crop_images", "crop_boxes", "region_images", "region_boxes", "region_labels", "region_valid"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    if "region_texts" in samples[0]:
        flat = [t for s in samples for t in s["region_texts"]]
        batch["region_texts"] = tokenizer(flat).view(len(samples), len(samples[0]["region_texts"]), -1)
    batch["skipped"] = [r for s in samples for r in s.get("skipped", [])]
    batch["notes"] = [r for s in samples for r in s.get("notes", [])]
    return batch


def build_sample(record: Record, views: ViewMaker, seed: int) -> dict:
    return views(record, open_rgb(record), seed)


# ----------------------------------------------------------------------------------------------------------------
# Map-style sources

class RecordDataset(Dataset):
    """Index -> sample. A bad record is skipped for the next one (batch size stays fixed), and reported."""

    def __init__(self, records, views: ViewMaker, seed: int):
        self.records, self.views, self.seed = records, views, seed

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        skipped, last = [], None
        for attempt in range(min(len(self.records), MAX_CONSECUTIVE_BAD)):
            i = (index + attempt) % len(self.records)
            try:
                sample = build_sample(self.records[i], self.views, sample_seed(self.seed, epoch, i))
                sample["skipped"] = skipped
                return sample
            except BadInput as exc:
                last = exc
                if attempt == 0:  # a stand-in that is bad too is reported when its own index comes up
                    skipped.append(exc.problem.to_dict())
        raise RuntimeError(f"{MAX_CONSECUTIVE_BAD} consecutive unusable records from index {index}; last: {last}")


class EpochBatchSampler:
    """Per-epoch seeded shuffle, split evenly over ranks, cut into batches; can start mid-epoch."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int):
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.epoch, self.start = 0, 0
        if len(self) == 0:
            raise ValueError(f"{n} samples are fewer than one batch of {batch_size} x {world} ranks")

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start = epoch, start_batch

    def __len__(self):
        return self.n // (self.batch_size * self.world)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        per_rank = len(self) * self.batch_size
        mine = order[self.rank * per_rank:(self.rank + 1) * per_rank]
        for b in range(self.start, len(self)):
            yield [(self.epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]


# ----------------------------------------------------------------------------------------------------------------
# Streamed shards

class ShardStream(IterableDataset):
    """Webdataset shards read by (rank, worker) roles; each role produces a fixed quota of batches per epoch.

    Shards are shuffled per epoch and pass and dealt to roles (or, with fewer than two shards per role, samples
    are dealt). A role that runs out of data starts another pass, so every rank takes the same number of steps.
    """

    def __init__(self, shards: list[str], views: ViewMaker, tokenizer, batch_size: int, steps_per_epoch: int,
                 rank: int, world: int, seed: int, workers: int):
        self.shards, self.views, self.tokenizer = shards, views, tokenizer
        self.batch_size, self.steps, self.rank, self.world = batch_size, steps_per_epoch, rank, world
        self.seed, self.workers = seed, max(1, workers)
        self.epoch, self.start, self.cursors = 0, 0, {}

    def set_epoch(self, epoch: int, start_batch: int = 0, cursors: dict | None = None):
        self.epoch, self.start, self.cursors = epoch, start_batch, dict(cursors or {})

    def _records(self, role: int, roles: int):
        """Raw records of a role, pass after pass, numbered by position in the role's stream."""
        position = 0
        for pass_no in itertools.count():
            usable = 0
            shards = list(self.shards)
            random.Random(self.seed * 7919 + self.epoch * 104729 + pass_no).shuffle(shards)
            by_shard = len(shards) >= 2 * roles  # with fewer shards, dealing samples keeps the roles even
            mine = shards[role::roles] if by_shard else shards
            k = 0
            for url in mine:
                for rec in shard_records(url):
                    k += 1
                    if not by_shard and (k - 1) % roles != role:
                        continue
                    usable += not isinstance(rec, BadInput)
                    yield position, rec
                    position += 1
            if usable == 0:
                raise RuntimeError(f"worker role {role}: no usable record in its shards {mine[:3]}...")

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        roles = self.world * nworkers
        # DataLoader restarts its round-robin at worker 0; rotate roles so batch n still comes from role n % W.
        local_role = (wid + self.start) % nworkers
        role = self.rank * nworkers + local_role
        quota = len(range(local_role, self.steps, nworkers))
        done = len(range(local_role, self.start, nworkers))
        skip_to = self.cursors.get(role, 0)
        samples, skipped, produced = [], [], done
        if produced >= quota:
            return
        for position, rec in self._records(role, roles):
            if position < skip_to:
                continue
            if isinstance(rec, BadInput):
                skipped.append(rec.problem.to_dict())
                continue
            try:
                samples.append(build_sample(rec, self.views, sample_seed(self.seed, self.epoch, role * 10**9 + position)))
            except BadInput as exc:
                skipped.append(exc.problem.to_dict())
                continue
            if len(samples) == self.batch_size:
                samples[0]["skipped"] = skipped
                batch = collate(samples, self.tokenizer)
                batch["cursor"] = (role, position + 1)
                yield batch
                samples, skipped, produced = [], [], produced + 1
                if produced >= quota:
                    return


def count_shard_samples(shards: list[str]) -> int:
    return sum(1 for url in shards for rec in shard_records(url) if not isinstance(rec, BadInput))


# ----------------------------------------------------------------------------------------------------------------

class TrainLoader:
    """One object for both paths: ``epoch(e, start_batch, cursors)`` yields the batches of epoch e on this rank."""

    def __init__(self, cfg: LoaderConfig, view_cfg: ViewConfig, tokenizer, batch_size: int, rank: int = 0,
                 world: int = 1, seed: int = 0):
        self.cfg, self.tokenizer = cfg, tokenizer
        self._map_loader = None
        views = ViewMaker(view_cfg)
        if cfg.kind in ("mgrs", "csv"):
            if cfg.kind == "mgrs":
                records = MGRSRecords(cfg.train, cfg.image_root, caption=cfg.caption)
            else:
                records = CaptionCSVRecords(cfg.train, cfg.image_root, cfg.image_key, cfg.caption_key, cfg.csv_sep)
            self.sampler = EpochBatchSampler(len(records), batch_size, rank, world, seed)
            self.dataset = RecordDataset(records, views, seed)
            self.steps_per_epoch = len(self.sampler)
            self.num_samples = len(records)
        elif cfg.kind == "webdataset":
            shards = expand_shards(cfg.train)
            missing = [s for s in shards if not __import__("os").path.isfile(s)]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of {len(shards)} shards not found, e.g. {missing[0]}")
            self.num_samples = cfg.num_samples or count_shard_samples(shards)
            self.steps_per_epoch = self.num_samples // (batch_size * world)
            if self.steps_per_epoch == 0:
                raise ValueError(f"{self.num_samples} samples are fewer than one batch of {batch_size} x {world}")
            self.dataset = ShardStream(shards, views, tokenizer, batch_size, self.steps_per_epoch, rank, world, seed,
                                       cfg.workers)
        else:
            raise ValueError(f"data.kind must be mgrs, csv or webdataset; got {cfg.kind!r}")

    def epoch(self, epoch: int, start_batch: int = 0, cursors: dict | None = None):
        workers = self.cfg.workers
        common = dict(num_workers=workers, pin_memory=torch.cuda.is_available())
        if workers > 0:
            common["prefetch_factor"] = 4
        if isinstance(self.dataset, ShardStream):
            # Workers hold their own copy of a stream, so a new epoch needs new workers.
            self.dataset.set_epoch(epoch, start_batch, cursors)
            yield from DataLoader(self.dataset, batch_size=None, **common)
            return
        self.sampler.set_epoch(epoch, start_batch)  # the sampler runs in this process: workers can persist
        if self._map_loader is None:
            self._map_loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=_Collate(self.tokenizer),
                                          persistent_workers=workers > 0, **common)
        yield from self._map_loader


class _Collate:
    """Picklable collate (workers receive it by pickling)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples):
        return collate(samples, self.tokenizer)
