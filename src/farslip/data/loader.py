"""Batches for training: map-style sources (MGRS JSON, CSV) and streamed shards (webdataset), with exact resume.

Both paths yield the batch dict of ``batch.py`` plus bookkeeping: ``skipped`` (records that could not be used,
each naming file/record/field), ``notes`` (object-level fixes: clipped or dropped boxes) and, for streams,
``cursor`` (how far the producing worker has read, so a checkpoint can resume mid-epoch exactly).
"""
from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from ..core.problems import BadInput
from .records import CaptionCSVRecords, MGRSRecords, Record, TrainDataError, open_rgb
from .shards import (SAMPLE_SHUFFLE_INITIAL, SAMPLE_SHUFFLE_SIZE, BufferedShuffle, Piece, count_piece_samples,
                     count_shard_samples, deal,
                     expand_shards, is_compressed, open_raw, pieces_per_shard, read_piece, replay_shuffle,
                     shuffled_shards)
from .device_views import collate_plans, planner_for
from .views import ViewConfig, ViewMaker, sample_seed

MAX_CONSECUTIVE_BAD = 1000
#: ``data.kind``: the formats a training run reads.
DATA_KINDS = ("webdataset", "mgrs", "csv")


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
    shuffle_buffer: int = SAMPLE_SHUFFLE_SIZE        # webdataset: samples a role shuffles among (1 = in shard order)
    shuffle_initial: int = SAMPLE_SHUFFLE_INITIAL    # ... and the buffer's fill before the first draw
    views_on_device: bool = False     # workers decode and draw boxes; crops are resized on the device


# ----------------------------------------------------------------------------------------------------------------

def collate(samples: list[dict], tokenizer: Callable) -> dict:
    """Stack views and tokenize texts; keep the skip/notes bookkeeping."""
    if "pixels" in samples[0]:  # data.views_on_device: uint8 images and view boxes, cut on the device
        batch = {**collate_plans(samples), "texts": tokenizer([s["caption"] for s in samples])}
    else:
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
        raise TrainDataError(f"{MAX_CONSECUTIVE_BAD} consecutive unusable records from index {index}; last: {last}")


class EpochBatchSampler:
    """The official order of a map-style set, cut into full batches; can start mid-epoch.

    open_clip_train/data.py (``get_json_dataset``, ``get_csv_dataset``) samples with torch's DistributedSampler --
    a shuffle seeded by seed + epoch, padded to a multiple of the ranks, rank r taking every world-th index -- and
    drops the last partial batch. With the same seed (the official sampler's is 0, farslip's ``run.seed`` default)
    each rank sees the official run's samples in the official order. (On one GPU the official code shuffles with
    torch's global generator instead, which no other program reproduces.)
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int):
        self.sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.n, self.rank, self.world, self.seed = n, rank, world, seed
        self.batch_size, self.epoch, self.start, self.offset = batch_size, 0, 0, 0
        if len(self) == 0:
            raise TrainDataError(f"{n} samples are fewer than one batch of {batch_size} x {world} ranks")

    def set_epoch(self, epoch: int, start_batch: int = 0, offset: int = 0):
        """Batches of ``epoch`` from ``start_batch`` on; ``offset`` > 0: the first ``offset`` samples of the epoch's
        order were trained on by another number of processes (an elastic resume), the rest is dealt anew."""
        self.epoch, self.start, self.offset = epoch, start_batch, offset

    def batches(self, offset: int = 0) -> int:
        """Batches per rank of an epoch of which ``offset`` samples are done."""
        if offset == 0:
            return self.sampler.num_samples // self.batch_size
        return max(0, self.n - offset) // (self.batch_size * self.world)

    def __len__(self):
        return self.batches(self.offset)

    def __iter__(self):
        if self.offset == 0:
            self.sampler.set_epoch(self.epoch)
            mine = list(self.sampler)
        else:  # the rest of the epoch's order, dealt as DistributedSampler deals: every world-th sample
            mine = epoch_order(self.n, self.seed, self.epoch)[self.offset:][self.rank::self.world]
        for b in range(self.start, len(self)):
            yield [(self.epoch, i) for i in mine[b * self.batch_size:(b + 1) * self.batch_size]]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The epoch's shuffled order of ``n`` samples before DistributedSampler deals it (its ``shuffle=True`` draw)."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g).tolist()


# ----------------------------------------------------------------------------------------------------------------
# Streamed shards

class _PassReader:
    """One pass of a role over its pieces: (item number, record) in order, and the sample count of each piece
    finished so far (``done``), which is what a checkpoint needs to find an item again by its number."""

    def __init__(self, pieces: list[Piece], opener):
        self.pieces, self.opener, self.done = pieces, opener, []

    def _piece(self, k: int, want=None):
        return read_piece(self.pieces[k], want, self.opener)

    def fresh(self) -> Iterator[tuple[int, Record | BadInput]]:
        return self._from(0, 0)

    def _from(self, k0: int, first_number: int, rest=None):
        number = first_number
        if rest is not None:  # the rest of a piece already opened
            for _, rec in rest:
                yield number, rec
                number += 1
            self.done.append(number - sum(self.done))
            k0 += 1
        for k in range(k0, len(self.pieces)):
            base = number
            for _, rec in self._piece(k):
                yield number, rec
                number += 1
            self.done.append(number - base)

    def resume(self, done: list[int], buffered: list[int], next_number: int):
        """(the shuffle buffer's items, the source from ``next_number`` on) of a pass restored from a checkpoint:
        the buffered records are read again -- the data of nothing else -- and reading goes on where it stopped."""
        self.done = list(done)
        starts = list(itertools.accumulate([0] + self.done))
        current = len(self.done)
        got: dict[int, Record | BadInput] = {}
        for k in range(current):  # finished pieces: only those holding a buffered item are opened
            mine = {n - starts[k] for n in buffered if starts[k] <= n < starts[k + 1]}
            if mine:
                for i, rec in itertools.islice(self._piece(k, want=mine.__contains__), max(mine) + 1):
                    if i in mine:
                        got[starts[k] + i] = rec
        source = iter(())
        if current < len(self.pieces):  # the piece being read: its pulled items, then the rest as the source
            pulled = next_number - starts[current]
            mine = {n - starts[current] for n in buffered if n >= starts[current]}
            reader = self._piece(current, want=lambda i: i in mine or i >= pulled)
            for i, rec in itertools.islice(reader, pulled):
                if i in mine:
                    got[starts[current] + i] = rec
            source = self._from(current, next_number, rest=reader)
        missing = [n for n in buffered if n not in got]
        if missing:
            raise TrainDataError(f"the shards changed since the checkpoint: item {missing[0]} of this pass is gone")
        return [(n, got[n]) for n in buffered], source


class ShardStream(IterableDataset):
    """Webdataset shards read by (rank, worker) roles; each role produces a fixed quota of batches per epoch.

    Per epoch the shards are shuffled as the official pipeline shuffles them and dealt to roles (whole shards, or
    byte-range pieces when shards are fewer than two per role; see ``shards.py``). Each role draws its samples
    through a shuffle buffer seeded by (seed, epoch, role), so the order is a function of the data alone and a
    checkpoint's cursor -- (pass, draws taken, samples of each finished piece) -- restores it exactly. A role
    that runs out of data starts another pass, so every rank takes the same number of steps.
    """

    def __init__(self, shards: list[str], views: ViewMaker, tokenizer, batch_size: int, steps_per_epoch: int,
                 rank: int, world: int, seed: int, workers: int, num_samples: int,
                 shuffle_buffer: int = SAMPLE_SHUFFLE_SIZE, shuffle_initial: int = SAMPLE_SHUFFLE_INITIAL,
                 opener=open_raw):
        self.shards, self.views, self.tokenizer = shards, views, tokenizer
        self.batch_size, self.steps, self.rank, self.world = batch_size, steps_per_epoch, rank, world
        self.seed, self.workers, self.opener = seed, max(1, workers), opener
        self.bufsize, self.initial = max(1, shuffle_buffer), max(1, min(shuffle_initial, shuffle_buffer))
        self.sizes = {url: os.path.getsize(url) for url in shards}
        roles = world * self.workers
        self._sizes, self._packed, self._num_samples = [self.sizes[u] for u in shards], \
            [is_compressed(u, opener) for u in shards], num_samples
        self.splits = self.splits_for(roles)
        if sum(self.splits.values()) < roles:
            fit = max((w for w in range(1, self.workers) if sum(self.splits_for(world * w).values()) >= world * w),
                      default=0)
            hint = f"set data.workers to {fit} or fewer" if fit else "use more or larger shards, or fewer ranks"
            raise TrainDataError(f"{len(shards)} shards ({num_samples} samples) are too few to give each of {roles} "
                             f"loader roles ({world} ranks x {self.workers} workers) its own data: {hint}")
        self.epoch, self.start, self.cursors, self.plan, self.epoch_steps = 0, 0, {}, {}, None

    def splits_for(self, roles: int) -> dict[str, int]:
        """Pieces per shard when ``roles`` loader roles share the shards."""
        counts = pieces_per_shard(len(self.shards), roles, sum(self._sizes), self._num_samples, self._sizes,
                                  self._packed)
        return dict(zip(self.shards, counts, strict=True))

    def set_epoch(self, epoch: int, start_batch: int = 0, cursors: dict | None = None,
                  plan: dict[int, list[Piece]] | None = None, steps: int | None = None):
        """Batches of ``epoch`` from ``start_batch`` on, each role from its cursor. ``plan`` (an elastic resume):
        the pieces each role reads in its first pass instead of the epoch's usual deal, and ``steps`` the batches
        of the epoch under that plan."""
        self.epoch, self.start, self.cursors = epoch, start_batch, dict(cursors or {})
        self.plan, self.epoch_steps = dict(plan or {}), steps

    def role_pieces(self, role: int, roles: int, pass_no: int, plan: dict[int, list[Piece]] | None = None) \
            -> list[Piece]:
        plan = self.plan if plan is None else plan
        if pass_no == 0 and role in plan:
            return list(plan[role])
        if pass_no == 0:
            order = shuffled_shards(self.shards, self.seed, self.epoch)
        else:  # a role's further passes: another order of its own
            order = list(self.shards)
            random.Random(f"farslip-pass/{self.seed}/{self.epoch}/{role}/{pass_no}").shuffle(order)
        splits = self.splits if roles == self.world * self.workers else self.splits_for(roles)
        return deal(order, self.sizes, splits, role, roles)

    def rest_of_epoch(self, epoch: int, roles: int, cursors: dict[int, dict], plan: dict[int, list[Piece]]) \
            -> list[Piece]:
        """What ``roles`` loader roles (of a run being resumed) had not drawn yet of ``epoch``'s first pass, given
        their cursors and the plan they read from: the items still in each role's shuffle buffer and everything
        it had not read, as parts of pieces, in role order. A role already in a further pass had drawn all of its
        own data; it has nothing left."""
        self.epoch = epoch
        rest: list[Piece] = []
        for role in range(roles):
            pieces, cursor = self.role_pieces(role, roles, 0, plan), cursors.get(role)
            if cursor is None:
                rest += pieces
                continue
            if cursor["pass"] > 0:
                continue
            done = cursor["pieces"]
            length = sum(done) if len(done) == len(pieces) else None
            shuffle, next_number = replay_shuffle(self.bufsize, self.initial, self._rng(role, 0), cursor["draws"],
                                                  length)
            starts = list(itertools.accumulate([0] + list(done)))
            for k, piece in enumerate(pieces):
                if k > len(done):
                    rest.append(piece)
                    continue
                held = sorted(n - starts[k] for n in shuffle.buf if n >= starts[k] and (k == len(done)
                                                                                       or n < starts[k + 1]))
                if k == len(done):
                    rest.append(piece.part(held, next_number - starts[k]))
                elif held:
                    rest.append(piece.part(held))
        return rest

    def deal_rest(self, rest: list[Piece], batch_size: int) -> tuple[dict[int, list[Piece]], int]:
        """The pieces ``rest`` dealt to this stream's roles for the rest of an epoch, so that each role has the
        samples its quota of batches needs (the spare ones spread evenly), and the number of batches of that
        rest: ``({role: parts}, steps)``. Sample counts come from the tar headers."""
        roles = self.world * self.workers
        counts = [count_piece_samples(p, self.opener) for p in rest]
        total = sum(counts)
        steps = total // (batch_size * self.world)
        need = [len(range(role // self.world, steps, self.workers)) * batch_size for role in range(roles)]
        spare = total - sum(need)
        need = [n + spare // roles + (role < spare % roles) for role, n in enumerate(need)]
        plan: dict[int, list[Piece]] = {role: [] for role in range(roles)}
        role = 0
        for piece, count in zip(rest, counts):
            taken = 0
            while taken < count:
                while need[role] == 0 and role < roles - 1:
                    role += 1
                n = min(need[role], count - taken) if role < roles - 1 else count - taken
                plan[role].append(piece if n == count else piece.part([], taken, taken + n))
                taken, need[role] = taken + n, need[role] - n
        return plan, steps

    def _rng(self, role: int, pass_no: int) -> random.Random:
        return random.Random(f"farslip-samples/{self.seed}/{self.epoch}/{role}/{pass_no}")

    def _draws(self, role: int, roles: int, cursor: dict | None):
        """(pass, draws so far, reader, item number, record), draw after draw, pass after pass."""
        if cursor is not None and not isinstance(cursor, dict):
            raise TrainDataError(f"loader cursor {cursor!r} is from an older farslip; resume from a checkpoint of this "
                             "version or start the epoch again")
        pass_no = cursor["pass"] if cursor else 0
        while True:
            reader = _PassReader(self.role_pieces(role, roles, pass_no), self.opener)
            if cursor:
                done = cursor["pieces"]
                length = sum(done) if len(done) == len(reader.pieces) else None
                shuffle, next_number = replay_shuffle(self.bufsize, self.initial, self._rng(role, pass_no),
                                                      cursor["draws"], length)
                shuffle.buf, source = reader.resume(done, shuffle.buf, next_number)
                drawn = cursor["draws"]
            else:
                shuffle, source, drawn = BufferedShuffle(self.bufsize, self.initial, self._rng(role, pass_no)), \
                    reader.fresh(), 0
            started_at, usable = drawn, 0
            for number, rec in shuffle.run(source):
                drawn += 1
                usable += isinstance(rec, Record)
                yield pass_no, drawn, reader, number, rec
            if usable == 0 and started_at == 0:
                raise TrainDataError(f"loader role {role}: no usable record in its pieces of "
                                   f"{[p.url for p in reader.pieces[:3]]}...")
            pass_no, cursor = pass_no + 1, None

    def __iter__(self):
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        roles = self.world * nworkers
        # DataLoader restarts its round-robin at worker 0; rotate roles so batch n still comes from role n % W.
        local_role = (wid + self.start) % nworkers
        role = self.rank + self.world * local_role  # the official split order: split_by_node, then by worker
        steps = self.steps if self.epoch_steps is None else self.epoch_steps
        quota = len(range(local_role, steps, nworkers))
        produced = len(range(local_role, self.start, nworkers))
        if produced >= quota:
            return
        samples, skipped, bad_run = [], [], 0
        for pass_no, drawn, reader, number, rec in self._draws(role, roles, self.cursors.get(role)):
            try:
                if isinstance(rec, BadInput):
                    raise rec
                index = (pass_no * roles + role) * 2 ** 40 + number
                samples.append(build_sample(rec, self.views, sample_seed(self.seed, self.epoch, index)))
                bad_run = 0
            except BadInput as exc:
                skipped.append(exc.problem.to_dict())
                bad_run += 1
                if bad_run >= MAX_CONSECUTIVE_BAD:
                    raise TrainDataError(f"{MAX_CONSECUTIVE_BAD} consecutive unusable records; last: {exc}") from None
                continue
            if len(samples) == self.batch_size:
                samples[0]["skipped"] = skipped
                batch = collate(samples, self.tokenizer)
                batch["cursor"] = (role, {"pass": pass_no, "draws": drawn, "pieces": list(reader.done)})
                yield batch
                samples, skipped, produced = [], [], produced + 1
                if produced >= quota:
                    return


# ----------------------------------------------------------------------------------------------------------------

class TrainLoader:
    """One object for both paths: ``epoch(e)`` yields the batches of epoch e on this rank.

    Position: call ``advance(batch)`` once a batch has been trained on; ``state_dict()`` is then this rank's place
    in the data (epoch, batch in epoch, each loader worker's cursor) and its counts of skipped records and fixed
    objects -- what a checkpoint saves for every rank. After ``load_state_dict(state)``, ``epoch(state's epoch)``
    goes on exactly where it stopped. (``epoch(e, start_batch, cursors)`` with the batches' ``cursor`` entries
    does the same for callers that keep the position themselves.)

    Elastic: ``load_elastic_state(states, workers)`` takes the states of *every* rank of a run with another
    number of processes (or loader workers, or another batch size) and deals what that run had not trained on of
    its epoch to this loader's ranks, so that every sample of the epoch is still trained on once.
    """

    def __init__(self, cfg: LoaderConfig, view_cfg: ViewConfig, tokenizer, batch_size: int, rank: int = 0,
                 world: int = 1, seed: int = 0):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self._map_loader = None
        views = planner_for(view_cfg, cfg.views_on_device)
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
            missing = [s for s in shards if not os.path.isfile(s)]
            if missing:
                raise FileNotFoundError(f"{len(missing)} of {len(shards)} shards not found, e.g. {missing[0]}")
            self.num_samples = cfg.num_samples or count_shard_samples(shards)
            self.steps_per_epoch = self.num_samples // (batch_size * world)
            if self.steps_per_epoch == 0:
                raise TrainDataError(f"{self.num_samples} samples are fewer than one batch of {batch_size} x {world}")
            self.dataset = ShardStream(shards, views, tokenizer, batch_size, self.steps_per_epoch, rank, world, seed,
                                       cfg.workers, self.num_samples, cfg.shuffle_buffer, cfg.shuffle_initial)
        else:
            raise TrainDataError(f"data.kind must be mgrs, csv or webdataset; got {cfg.kind!r}")
        self._state = self._fresh_epoch(0)

    def _fresh_epoch(self, epoch: int, **counts) -> dict:
        return {"epoch": epoch, "batch_in_epoch": 0, "cursors": {}, "skipped_records": counts.get("skipped", 0),
                "object_fixes": counts.get("fixes", 0), "batch_size": self.batch_size, "offset": 0,
                "epoch_steps": None, "plan": {}}

    # -- position ----------------------------------------------------------------------------------------------
    def advance(self, batch: dict) -> None:
        """Count ``batch`` as trained on (its cursor, skipped records and object fixes)."""
        st = self._state
        st["batch_in_epoch"] += 1
        if "cursor" in batch:
            role, cursor = batch["cursor"]
            st["cursors"][int(role)] = cursor
        st["skipped_records"] += len(batch.get("skipped", ()))
        st["object_fixes"] += len(batch.get("notes", ()))
        if st["batch_in_epoch"] >= self.epoch_steps():
            self._state = self._fresh_epoch(st["epoch"] + 1, skipped=st["skipped_records"], fixes=st["object_fixes"])

    def epoch_steps(self) -> int:
        """Batches of the current epoch (fewer than ``steps_per_epoch`` for the rest of an epoch re-dealt by an
        elastic resume)."""
        steps = self._state["epoch_steps"]
        return self.steps_per_epoch if steps is None else steps

    def steps_left(self, epochs: int) -> int:
        """Batches from here to the end of epoch ``epochs - 1``."""
        st = self._state
        if st["epoch"] >= epochs:
            return 0
        return self.epoch_steps() - st["batch_in_epoch"] + (epochs - 1 - st["epoch"]) * self.steps_per_epoch

    def state_dict(self) -> dict:
        """This rank's place in the data and its skip counts: plain ints, lists and dicts (torch.save-able with
        weights_only loading, JSON-able)."""
        st = self._state
        return {**st, "cursors": {int(k): v for k, v in st["cursors"].items()},
                "plan": {int(role): [p.to_dict() for p in pieces] for role, pieces in st["plan"].items()}}

    def load_state_dict(self, state: dict) -> None:
        self._state = {**self._fresh_epoch(int(state["epoch"])),
                       "batch_in_epoch": int(state["batch_in_epoch"]),
                       "cursors": {int(k): v for k, v in state.get("cursors", {}).items()},
                       "skipped_records": int(state.get("skipped_records", 0)),
                       "object_fixes": int(state.get("object_fixes", 0)),
                       "offset": int(state.get("offset", 0)), "epoch_steps": state.get("epoch_steps"),
                       "plan": {int(role): [Piece.from_dict(p) for p in pieces]
                                for role, pieces in (state.get("plan") or {}).items()}}

    def load_elastic_state(self, states: list[dict], workers: int) -> None:
        """Go on from ``states`` -- one per rank of a run with another number of processes, loader ``workers`` per
        process or batch size -- with the rest of their epoch dealt to this loader's ranks: a map-style set's
        epoch order goes on from the first sample no rank had trained on; a stream's roles hand over what their
        shuffle buffers held and what they had not read. Each rank computes the same deal. The skip counts of
        the old ranks go to rank 0, so that the run's totals stay right."""
        first = states[0]
        epoch, counts = int(first["epoch"]), {"skipped": 0, "fixes": 0}
        if self.rank == 0:
            counts = {"skipped": sum(int(s.get("skipped_records", 0)) for s in states),
                      "fixes": sum(int(s.get("object_fixes", 0)) for s in states)}
        state = self._fresh_epoch(epoch, **counts)
        if isinstance(self.dataset, ShardStream):
            roles = len(states) * max(1, workers)
            cursors = {int(k): v for s in states for k, v in s.get("cursors", {}).items()}
            plan = {int(r): [Piece.from_dict(p) for p in pieces] for s in states
                    for r, pieces in (s.get("plan") or {}).items()}
            if not cursors and not plan:  # nothing of the epoch drawn yet: this run's own deal of it
                self._state = state
                return
            rest = self.dataset.rest_of_epoch(epoch, roles, cursors, plan)
            new_plan, steps = self.dataset.deal_rest(rest, self.batch_size)
            state.update(plan={r: p for r, p in new_plan.items() if r % self.world == self.rank}, epoch_steps=steps)
        else:
            trained = int(first.get("batch_in_epoch", 0)) * int(first.get("batch_size", self.batch_size)) * len(states)
            offset = min(self.num_samples, int(first.get("offset", 0)) + trained)
            state.update(offset=offset, epoch_steps=self.sampler.batches(offset) if offset else None)
        self._state = state if self.epoch_steps() > 0 else self._fresh_epoch(epoch + 1, **counts)

    @property
    def skipped_records(self) -> int:
        return self._state["skipped_records"]

    @property
    def object_fixes(self) -> int:
        return self._state["object_fixes"]

    # -- batches -----------------------------------------------------------------------------------------------
    def epoch(self, epoch: int, start_batch: int | None = None, cursors: dict | None = None):
        st = self._state
        if start_batch is None:  # from this loader's own position
            if st["epoch"] != epoch:
                self._state = st = self._fresh_epoch(epoch, skipped=st["skipped_records"], fixes=st["object_fixes"])
            start_batch, cursors = st["batch_in_epoch"], st["cursors"]
        else:
            st.update(epoch=epoch, batch_in_epoch=start_batch, cursors=dict(cursors or {}))
        workers = self.cfg.workers
        common = dict(num_workers=workers, pin_memory=torch.cuda.is_available())
        if workers > 0:
            common.update(prefetch_factor=4, worker_init_fn=_ignore_sigterm)
        if isinstance(self.dataset, ShardStream):
            # Workers hold their own copy of a stream, so a new epoch needs new workers.
            self.dataset.set_epoch(epoch, start_batch, cursors, st["plan"], st["epoch_steps"])
            yield from DataLoader(self.dataset, batch_size=None, **common)
            return
        self.sampler.set_epoch(epoch, start_batch, st["offset"])  # the sampler runs in this process: workers persist
        if self._map_loader is None:
            self._map_loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=_Collate(self.tokenizer),
                                          persistent_workers=workers > 0, **common)
        yield from self._map_loader


def _ignore_sigterm(worker_id: int) -> None:
    """Loader workers leave SIGTERM to the training process: a scheduler that signals the whole process group
    (SLURM's scancel, a preemption) must not kill the workers while the trainer finishes its step and saves. They
    still go when the trainer does (torch's workers watch their parent)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Collate:
    """Picklable collate (workers receive it by pickling)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples):
        return collate(samples, self.tokenizer)
