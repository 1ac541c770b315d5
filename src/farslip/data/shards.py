"""Webdataset tar shards: reading them in byte-range pieces, dealing pieces to loader roles, shuffle buffers.

A *role* is one (rank, loader worker) pair. With at least two shards per role a role reads whole shards, dealt as
the official pipeline deals them (``split_by_node`` then ``split_by_worker``). With fewer, each shard is cut into
byte-range *pieces* and the pieces are dealt, so a shard is read by a bounded number of roles and every byte is
read about once (instead of every role reading every shard and keeping one sample in N).

A piece owns the samples that start after its *anchor*: the first member whose real tar header lies at or after
the piece's first byte. The sample holding that anchor member belongs to the previous piece, which reads on past
its end to complete it. Both sides find the same anchor -- the previous piece by walking the headers, this one by
scanning 512-byte blocks for a valid header (checksum and ``ustar`` magic) -- so no sample is read twice or lost.

``BufferedShuffle`` is webdataset's shuffle buffer (the official pipeline's ``wds.shuffle`` and ``detshuffle2``),
with its buffer and random generator in the open so a loader can say exactly where it is.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from webdataset.tariterators import base_plus_ext

from ..core.problems import BadInput
from .records import Record, bad_record

IMAGE_KEYS = ("img_content", "jpg", "jpeg", "png", "webp", "tif", "tiff")
TEXT_KEYS = ("caption", "txt", "text")
BLOCK = tarfile.BLOCKSIZE
EXTENSION_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK,
                   tarfile.SOLARIS_XHDTYPE)
MAX_EXTENSION_BLOCKS = 16    # how far before an anchor header its pax / GNU long-name header may start
MIN_SAMPLES_PER_PIECE = 4    # pieces smaller than this would spend more on finding their start than on data
XZ_MAGIC = b"\xfd7zXZ\x00"
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", XZ_MAGIC)  # gzip, bzip2, xz: what tarfile's "r|*" reads

# The official pipeline's buffer sizes (open_clip_train/data.py: _SHARD_SHUFFLE_*, _SAMPLE_SHUFFLE_*).
SHARD_SHUFFLE_SIZE, SHARD_SHUFFLE_INITIAL = 2000, 500
SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL = 5000, 1000


def open_raw(path: str):
    """Unbuffered: every byte asked for is a byte read, and a seek reads nothing."""
    return open(path, "rb", buffering=0)


def expand_shards(spec: str | list[str]) -> list[str]:
    """Brace-expand shard specs (``{pub11,rs3}-train-{0000..0031}.tar``) and globs (``shards/*.tar``); ``::`` or a
    list joins several sources into one mixture."""
    import glob

    from webdataset.shardlists import expand_urls

    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    urls = [url for s in specs for url in expand_urls(str(s))]
    return [m for url in urls for m in (sorted(glob.glob(url)) if glob.has_magic(url) else [url])]


# ----------------------------------------------------------------------------------------------------------------
# Shuffle buffers

class BufferedShuffle:
    """webdataset's ``_shuffle`` (fill to ``initial``, then draw one of the buffer per item read, refill two per
    draw up to ``bufsize``; drain at the end), as an object whose ``buf`` and ``rng`` can be inspected and restored.

    For the same ``rng`` it yields exactly what ``webdataset.filters._shuffle`` yields (a test holds it to that).
    """

    def __init__(self, bufsize: int, initial: int, rng: random.Random, buf: list | None = None):
        self.bufsize, self.initial, self.rng = bufsize, min(initial, bufsize), rng
        self.buf = list(buf or [])

    def _pick(self):
        k = self.rng.randint(0, len(self.buf) - 1)
        item = self.buf[k]
        self.buf[k] = self.buf[-1]
        self.buf.pop()
        return item

    def run(self, source: Iterator) -> Iterator:
        for item in source:
            self.buf.append(item)
            if len(self.buf) < self.bufsize:
                nxt = next(source, _END)
                if nxt is not _END:
                    self.buf.append(nxt)
            if len(self.buf) >= self.initial:
                yield self._pick()
        while self.buf:
            yield self._pick()


_END = object()


def shuffled_shards(shards: list[str], seed: int, epoch: int) -> list[str]:
    """The official epoch order of the shard list: ``detshuffle2(2000, 500, seed=seed + epoch)``."""
    return list(BufferedShuffle(SHARD_SHUFFLE_SIZE, SHARD_SHUFFLE_INITIAL, random.Random(seed + epoch)).run(iter(shards)))


def replay_shuffle(bufsize: int, initial: int, rng: random.Random, drawn: int, length: int | None):
    """Where a BufferedShuffle over items 0, 1, 2, ... stands after ``drawn`` draws: (buffer of item numbers, next
    item number to read). Draws depend only on the buffer's length, so no item has to be read to know this.
    ``length`` is the number of items when the source's end had been reached (None: not reached)."""
    source = iter(range(length)) if length is not None else itertools.count()
    shuffle = BufferedShuffle(bufsize, initial, rng)
    taken = sum(1 for _ in itertools.islice(shuffle.run(source), drawn))
    if taken != drawn:
        raise ValueError(f"cannot replay {drawn} draws from {length} items")
    return shuffle, next(source, length)


# ----------------------------------------------------------------------------------------------------------------
# Pieces and dealing

@dataclass(frozen=True)
class Piece:
    """The samples of byte range ``index`` of ``count`` of a shard -- or, after an elastic resume re-dealt an epoch,
    a part of them: those numbered in ``only`` and those from ``tail`` (to ``stop``, exclusive) on. A piece's
    samples are numbered 0, 1, ... in shard order; a part's are renumbered 0, 1, ... in the same order."""
    url: str
    index: int    # j of ``count``
    count: int    # pieces of this shard
    size: int     # the shard's size in bytes
    only: tuple[int, ...] = ()      # sample numbers (all under ``tail``) ...
    tail: int | None = 0            # ... and every sample from this one on (None: none)
    stop: int | None = None         # ... up to this one, exclusive (None: to the piece's end)

    @property
    def start(self) -> int:
        return self.index * self.size // self.count // BLOCK * BLOCK

    @property
    def end(self) -> int | None:
        return None if self.index == self.count - 1 else Piece(self.url, self.index + 1, self.count, self.size).start

    @property
    def whole(self) -> bool:
        return not self.only and self.tail == 0 and self.stop is None

    def local(self, n: int) -> int | None:
        """This part's number of the piece's sample ``n`` (None: not in the part)."""
        if n in self._only_index:
            return self._only_index[n]
        if self.tail is not None and n >= self.tail and (self.stop is None or n < self.stop):
            return len(self.only) + n - self.tail
        return None

    def sample_number(self, i: int) -> int:
        """The piece's number of this part's sample ``i``."""
        return self.only[i] if i < len(self.only) else self.tail + i - len(self.only)

    def part(self, locals_: list[int], rest_from: int | None = None, rest_to: int | None = None) -> "Piece":
        """The part of this part made of its samples ``locals_`` (ascending) and those numbered ``rest_from`` to
        ``rest_to`` (exclusive; None: to the end) in this part's numbering."""
        only = [self.sample_number(i) for i in locals_]
        tail = stop = None
        if rest_from is not None:
            lead = len(self.only)
            only += [self.only[i] for i in range(rest_from, min(lead, rest_to if rest_to is not None else lead))]
            if self.tail is not None and (rest_to is None or rest_to > lead):
                tail = self.tail + max(0, rest_from - lead)
                stop = self.stop if rest_to is None else self.tail + rest_to - lead
        return Piece(self.url, self.index, self.count, self.size, tuple(sorted(only)), tail, stop)

    @functools.cached_property
    def _only_index(self) -> dict[int, int]:
        return {n: i for i, n in enumerate(self.only)}

    def to_dict(self) -> dict:
        return {"url": self.url, "index": self.index, "count": self.count, "size": self.size, "only": list(self.only),
                "tail": self.tail, "stop": self.stop}

    @classmethod
    def from_dict(cls, d: dict) -> "Piece":
        return cls(d["url"], int(d["index"]), int(d["count"]), int(d["size"]), tuple(int(n) for n in d["only"]),
                   None if d["tail"] is None else int(d["tail"]), None if d["stop"] is None else int(d["stop"]))


def pieces_per_shard(num_shards: int, roles: int, total_bytes: int, num_samples: int, sizes: list[int],
                     compressed: list[bool] | None = None) -> list[int]:
    """1 for each shard when there are at least two shards per role; otherwise enough pieces for two per role,
    each still holding about MIN_SAMPLES_PER_PIECE samples. A compressed shard is one piece."""
    if num_shards >= 2 * roles:
        return [1] * num_shards
    want = math.ceil(2 * roles / num_shards)
    per_sample = total_bytes / max(1, num_samples)
    compressed = compressed or [False] * len(sizes)
    return [1 if packed else max(1, min(want, int(size // (MIN_SAMPLES_PER_PIECE * per_sample))))
            for size, packed in zip(sizes, compressed, strict=True)]


def is_compressed(url: str, opener: Callable[[str], object] = open_raw) -> bool:
    with opener(url) as f:
        return f.read(len(XZ_MAGIC)).startswith(COMPRESSED_MAGIC)


def deal(shards: list[str], sizes: dict[str, int], counts: dict[str, int], role: int, roles: int) -> list[Piece]:
    """The pieces of ``role`` (``rank + world * worker``, the official split order) for one shard order."""
    pieces = [Piece(url, j, counts[url], sizes[url]) for url in shards for j in range(counts[url])]
    return pieces[role::roles]


# ----------------------------------------------------------------------------------------------------------------
# Reading a piece

def _valid_header(block: bytes) -> tarfile.TarInfo | None:
    if len(block) < BLOCK or block[257:262] != b"ustar":
        return None
    try:
        return tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return None


def _entry_start(f, start: int) -> int | None:
    """Offset of the tar entry (its extension headers included) holding the first real header at or after
    ``start``; None when there is none."""
    pos = start
    while True:
        f.seek(pos)
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            return None
        info = _valid_header(block)
        if info is not None:
            break
        pos += BLOCK
    if info.type in EXTENSION_TYPES:
        return pos
    for back in range(1, MAX_EXTENSION_BLOCKS + 1):  # a pax / long-name header just before belongs to this entry
        at = pos - back * BLOCK
        if at < 0:
            break
        f.seek(at)
        ext = _valid_header(f.read(BLOCK))
        if ext is not None:
            blocks = -(-ext.size // BLOCK)
            return at if ext.type in EXTENSION_TYPES and at + BLOCK * (1 + blocks) == pos else pos
    return pos


def _members(f, offset: int, compressed: bool) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Regular members with a webdataset key, from the entry at ``offset`` on; headers are read, data skipped
    (a compressed shard is decompressed as a stream from its start)."""
    f.seek(offset)
    tar = tarfile.open(fileobj=f, mode="r|*") if compressed else tarfile.TarFile(fileobj=f, mode="r")
    while True:
        member = tar.next()
        tar.members.clear()  # (why) a streamed shard would otherwise keep every header it has passed
        if member is None:
            return
        if member.isreg() and base_plus_ext(member.name)[0] is not None and not _is_meta(member.name):
            yield tar, member


def _is_meta(name: str) -> bool:
    """webdataset's tar_file_iterator skips ``__*__`` metadata members."""
    return re.match(r"__[^/]*__($|/)", name) is not None


def _record(url: str, key: str, data: dict[str, bytes]) -> Record | BadInput:
    where = f"sample {key}"
    image = next((data[k] for k in IMAGE_KEYS if k in data), None)
    text = next((data[k] for k in TEXT_KEYS if k in data), None)
    if image is None:
        return bad_record(url, where, "image", f"no image member (looked for {', '.join(IMAGE_KEYS)})")
    caption = text.decode("utf-8", errors="replace").strip() if text is not None else ""
    if not caption:
        return bad_record(url, where, "caption", "missing or empty")
    return Record(url, where, caption, image_bytes=image)


def _piece_members(piece: Piece, want: Callable[[int], bool], opener) -> Iterator[tuple[int, str, dict]]:
    """(number, key, {suffix: bytes, or None where not wanted}) of each sample the piece owns."""
    with opener(piece.url) as f:
        compressed = f.read(len(XZ_MAGIC)).startswith(COMPRESSED_MAGIC)
        if compressed and piece.index > 0:
            return  # a compressed shard cannot be entered in the middle: its first piece reads it whole
        first = 0 if piece.index == 0 else _entry_start(f, piece.start)
        if first is None:
            return
        end = None if compressed else piece.end
        key, members, wanted, n, last = None, None, False, 0, False
        for tar, member in _members(f, first, compressed):
            prefix, suffix = base_plus_ext(member.name)
            if key is None and piece.index > 0:
                key = prefix  # the anchor's sample: the previous piece completes it (members stays None)
            elif prefix != key:
                if members is not None:
                    yield n, key, members
                    n += 1
                if last:
                    return
                key, members, wanted = prefix, {}, want(n)
            if end is not None and member.offset_data - BLOCK >= end:
                last = True  # the sample of the first header past the end is the last this piece completes
            suffix = suffix.lower()
            if members is not None and suffix not in members:
                members[suffix] = tar.extractfile(member).read() if wanted else None
        if members is not None:
            yield n, key, members


def read_piece(piece: Piece, want: Callable[[int], bool] | None = None,
               opener: Callable[[str], object] = open_raw) -> Iterator[tuple[int, Record | BadInput | None]]:
    """(number within the piece, record) for each sample the piece owns. Samples ``want`` rejects are passed over
    by their headers (their data is not read) and come as None. An unreadable shard ends in one BadInput."""
    want = want or (lambda i: True)
    local = (lambda n: n) if piece.whole else piece.local

    def wanted(n: int) -> bool:
        i = local(n)
        return i is not None and want(i)

    i = 0
    try:
        for n, key, members in _piece_members(piece, wanted, opener):
            i = local(n)
            if i is None:
                continue
            yield i, (_record(piece.url, key, members) if want(i) else None)
            i += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield i, bad_record(piece.url, None, "shard", f"unreadable tar: {exc}")


def count_piece_samples(piece: Piece, opener: Callable[[str], object] = open_raw) -> int:
    """The samples of ``piece`` (of its part), from the tar headers only."""
    return sum(1 for _ in read_piece(piece, lambda i: False, opener))


def shard_samples(url: str, opener: Callable[[str], object] = open_raw) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) of every sample of one shard, grouped as the trainer groups them; a broken tar
    raises (tarfile.TarError, OSError, EOFError) after the samples before the damage."""
    for _, key, members in _piece_members(Piece(url, 0, 1, os.path.getsize(url)), lambda i: True, opener):
        yield key, members


def shard_records(url: str, opener: Callable[[str], object] = open_raw) -> Iterator[Record | BadInput]:
    """Records of one tar shard, in order. Broken members are yielded as BadInput (the caller counts them)."""
    for _, rec in read_piece(Piece(url, 0, 1, os.path.getsize(url)), opener=opener):
        yield rec


def count_shard_samples(shards: list[str], opener: Callable[[str], object] = open_raw) -> int:
    """Samples with an image and a caption member in ``shards``, from the tar headers only (no data is read)."""
    total = 0
    for url in shards:
        try:
            for _, _, members in _piece_members(Piece(url, 0, 1, os.path.getsize(url)), lambda i: False, opener):
                total += any(k in members for k in IMAGE_KEYS) and any(k in members for k in TEXT_KEYS)
        except (tarfile.TarError, OSError, EOFError):
            continue  # counted as far as readable; the training pass reports it
    return total
