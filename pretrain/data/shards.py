"""Shard lists, their split over ranks and workers, and seeded, resumable reading.

Why not ``wds.WebDataset(resampled=True)``: its shard order is not reproducible across runs and
it records no position, so it cannot resume exactly (docs/DESIGN.md, pitfalls). Here each
(rank, loader worker) owns a fixed slice of every source - whole shards, or, when the source has
fewer shards than there are (rank, worker) readers, a fixed subset of the samples of one or two
shards - and reads it epoch after epoch in an order drawn from (seed, stream, rank, worker,
source, epoch). Either way every sample of a source belongs to exactly one reader. A position is
``(epoch, index in that order, raw samples read from that shard)``, which is enough to reopen the
shard and skip to the same sample without decoding anything. The stream never ends, so ranks
with fewer shards still produce as many batches as the others (no hang on uneven shards).
Tar reading, ``pipe:`` URLs and sample grouping are webdataset's (``gopen``,
``tar_file_expander``, ``group_by_keys``); errors go to a handler that records them and moves
on, without webdataset's 0.5 s sleep per bad sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import braceexpand
import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from .seeding import BLOCK_SHUFFLE, SHARD_ORDER, SOURCE_MIX, derive_rng

# ShardErrorHook(url, exception) is called for every shard that cannot be opened or read to its end
ShardErrorHook = Callable[[str, BaseException], None]


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Brace-expand one pattern or a list of patterns (local paths, ``file:``, ``pipe:`` URLs)."""
    if isinstance(urls, str):
        urls = [urls]
    out: list[str] = []
    for pattern in urls:
        out.extend(braceexpand.braceexpand(pattern))
    if not out:
        raise ValueError(f"no shard URLs in {urls!r}")
    return out


@dataclass(frozen=True)
class ShardShare:
    """The part of one shard a (rank, worker) reader serves: the samples whose index in the shard, taken
    modulo ``modulus``, lies in ``[first, stop)``. ``modulus == 1``: the whole shard."""

    url: str
    modulus: int = 1
    first: int = 0
    stop: int = 1

    def takes(self, index: int) -> bool:
        return self.first <= index % self.modulus < self.stop

    def took_any_before(self, index: int) -> bool:
        """Whether one of the samples ``0 .. index-1`` was this reader's."""
        return index > self.first


def reader_count(world_size: int, num_workers: int) -> int:
    """(rank, loader worker) readers of a source, all ranks together (0 workers: the main process)."""
    return world_size * max(1, num_workers)


def splits_by_sample(num_shards: int, world_size: int, num_workers: int) -> bool:
    """Whether a source of ``num_shards`` shards is split below the shard (fewer shards than readers)."""
    return num_shards < reader_count(world_size, num_workers)


def assign_shards(urls: Sequence[str], rank: int, world_size: int, worker: int,
                  num_workers: int) -> list[ShardShare]:
    """What one loader worker of one rank reads of a source, such that over all
    ``world_size x workers`` readers every sample of the source belongs to exactly one reader.

    Reader ``g = rank + world_size * worker`` of ``P``. With at least ``P`` shards, the reader
    reads the whole shards ``urls[g::P]`` (the same as splitting over ranks, then workers).
    With fewer, it would otherwise have to read shards other readers read as well, serving their
    samples twice; instead each shard's samples are dealt by index into ``M = P / gcd(n, P)``
    classes, and the ``n * M`` (shard, class) pieces are handed out in order, ``n / gcd(n, P)``
    to each reader: every reader gets the same share of the source, reads one or two shards, and a
    shard needs only ``M`` samples for each of its readers to get one.
    """
    W = max(1, num_workers)  # 0 workers: the main process reads
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    if not 0 <= worker < W:
        raise ValueError(f"worker {worker} out of range for {W} worker(s)")
    P = reader_count(world_size, num_workers)
    g = rank + world_size * worker
    n = len(urls)
    if n >= P:
        return [ShardShare(u) for u in urls[g::P]]
    d = math.gcd(n, P)
    M, per_reader = P // d, n // d
    lo, hi = g * per_reader, (g + 1) * per_reader  # this reader's pieces; shard s holds [s*M, (s+1)*M)
    return [ShardShare(urls[s], M, max(lo, s * M) - s * M, min(hi, (s + 1) * M) - s * M)
            for s in range(lo // M, (hi - 1) // M + 1)]


def iter_shard(url: str, on_error: ShardErrorHook) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard (dicts of ``__key__``, ``__url__`` and extension -> bytes).

    A shard that cannot be opened or is corrupt reports once through ``on_error`` and ends; the
    samples read before the damage are kept (a half sample is caught by the required-keys check).
    """
    reported = []

    def handler(exn: BaseException) -> bool:
        if not reported:  # one report per shard: a broken tar would otherwise repeat
            reported.append(exn)
            on_error(url, exn)
        return True

    try:
        stream = gopen(url)
    except Exception as exn:  # missing file, failed pipe
        handler(exn)
        return
    try:
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        yield from group_by_keys(files, handler=handler)
    finally:
        try:
            stream.close()
        except Exception as exn:  # a pipe: command that exits non-zero fails on close
            handler(exn)


class SourceReader:
    """An endless, seeded walk through one source's shard shares for one (rank, worker).

    ``sample`` counts the raw samples read from the current shard, this reader's or not, so that a
    resume skips exactly as many without decoding any.
    """

    def __init__(self, shares: Sequence[ShardShare | str], key: tuple[int, ...], on_error: ShardErrorHook,
                 state: dict | None = None, label: str = ""):
        if not shares:
            raise ValueError(f"source {label!r}: no shards assigned")
        self.shares = [ShardShare(s) if isinstance(s, str) else s for s in shares]
        self.urls = [s.url for s in self.shares]
        self.key = key
        self.on_error = on_error
        self.label = label or self.urls[0]
        st = state or {}
        self.epoch = int(st.get("epoch", 0))
        self.pos = int(st.get("pos", 0))
        self.sample = int(st.get("sample", 0))
        self._order = self._order_for(self.epoch)
        self._it: Iterator | None = None
        self._share: ShardShare | None = None
        # the distinct shards that gave no sample since the last one that did: a source is dead
        # only when every shard is in it (counting visits instead would count one corrupt shard
        # twice when an epoch ends and the next begins with it)
        self._empty_run: set[int] = set()

    def _order_for(self, epoch: int) -> list[int]:
        return derive_rng(*self.key, SHARD_ORDER, epoch).permutation(len(self.shares)).tolist()

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "sample": self.sample}

    def _open_current(self) -> None:
        share = self.shares[self._order[self.pos]]
        it = iter_shard(share.url, self.on_error)
        for _ in range(self.sample):  # resume: skip raw samples, nothing is decoded
            if next(it, None) is None:
                break
        self._it = it
        self._share = share
        self._had_sample = share.took_any_before(self.sample)

    def _advance_shard(self) -> None:
        if self._had_sample:
            self._empty_run.clear()
        else:
            self._empty_run.add(self._order[self.pos])
        if len(self._empty_run) >= len(self.shares):
            part = self.shares[0]
            detail = "" if part.modulus == 1 else (
                f"; with fewer shards than ranks x loader workers each reader keeps only the samples "
                f"whose index modulo {part.modulus} is its own, so a shard needs at least "
                f"{part.modulus} samples to feed every reader")
            raise RuntimeError(
                f"source {self.label!r}: none of its {len(self.urls)} shard(s) gave a sample "
                f"(all unreadable, corrupt or empty{detail}): "
                f"{self.urls[:4]}{' ...' if len(self.urls) > 4 else ''}")
        self.pos += 1
        self.sample = 0
        if self.pos >= len(self.shares):
            self.epoch += 1
            self.pos = 0
            self._order = self._order_for(self.epoch)
        self._it = None

    def next_raw(self) -> dict[str, Any]:
        while True:
            if self._it is None:
                self._open_current()
            raw = next(self._it, None)
            if raw is None:
                self._advance_shard()
                continue
            index = self.sample
            self.sample += 1
            if not self._share.takes(index):  # another reader's sample
                continue
            self._had_sample = True
            return raw

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None


class SourceMixer:
    """Draws each raw sample from one source, chosen with probability proportional to its weight
    by a generator seeded with the draw's index (so a position is just a count)."""

    def __init__(self, readers: Sequence[SourceReader], weights: Sequence[float], key: tuple[int, ...],
                 draws: int = 0):
        self.readers = list(readers)
        w = np.asarray(weights, dtype=np.float64)
        self.cum = np.cumsum(w / w.sum())
        self.key = key
        self.draws = draws

    def state(self) -> dict:
        return {"draws": self.draws, "sources": [r.state() for r in self.readers]}

    def next_raw(self) -> dict[str, Any]:
        if len(self.readers) == 1:
            i = 0
        else:
            u = derive_rng(*self.key, SOURCE_MIX, self.draws).random()
            i = min(int(np.searchsorted(self.cum, u, side="right")), len(self.readers) - 1)
        self.draws += 1
        return self.readers[i].next_raw()

    def close(self) -> None:
        for r in self.readers:
            r.close()


class BlockShuffler:
    """Shuffle buffer with a recordable position: ``size`` raw samples are read, permuted by a
    generator seeded with the block's index, and handed out in that order.

    Position = (block, offset) plus the mixer's state at the block's start; resuming re-reads that
    one block (raw bytes only) and skips ``offset`` entries. A rolling buffer (webdataset's
    ``shuffle``) mixes a little more across block edges but its contents cannot be recorded
    cheaply, so it cannot resume exactly.
    """

    def __init__(self, make_mixer: Callable[[dict | None], SourceMixer], size: int,
                 key: tuple[int, ...], state: dict | None = None):
        self.make_mixer = make_mixer
        self.size = size
        self.key = key
        st = state or {}
        self.block = int(st.get("block", 0))
        self.mixer = make_mixer(st.get("start"))
        self._start = self.mixer.state()
        self._items: list | None = None
        self.offset = 0
        if st.get("offset", 0):
            self._fill()
            self.offset = int(st["offset"])

    def _fill(self) -> None:
        self._start = self.mixer.state()
        items = [self.mixer.next_raw() for _ in range(self.size)]
        perm = derive_rng(*self.key, BLOCK_SHUFFLE, self.block).permutation(self.size)
        self._items = [items[j] for j in perm]
        self.offset = 0

    def next_raw(self) -> tuple[int, dict[str, Any]]:
        """(global sample index, raw sample)."""
        if self._items is None or self.offset >= self.size:
            if self._items is not None:
                self.block += 1
            self._fill()
        raw = self._items[self.offset]
        self._items[self.offset] = None  # free the bytes early
        index = self.block * self.size + self.offset
        self.offset += 1
        return index, raw

    def state(self) -> dict:
        if self._items is not None and self.offset >= self.size:  # block used up: next one
            return {"block": self.block + 1, "offset": 0, "start": self.mixer.state()}
        if self._items is None:
            return {"block": self.block, "offset": 0, "start": self.mixer.state()}
        return {"block": self.block, "offset": self.offset, "start": self._start}

    def close(self) -> None:
        self.mixer.close()
