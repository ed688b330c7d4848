"""Shard lists, their split over ranks and workers, and seeded, resumable reading.

Why not ``wds.WebDataset(resampled=True)``: its shard order is not reproducible across runs and
it records no position, so it cannot resume exactly (ARCHITECTURE.md, pitfalls). Here each
(rank, loader worker) owns a fixed slice of every source's shards and reads them epoch after
epoch in an order drawn from (seed, stream, rank, worker, source, epoch); its position is
``(epoch, index in that order, samples read from that shard)``, which is enough to reopen the
shard and skip to the same sample without decoding anything. The stream never ends, so ranks
with fewer shards still produce as many batches as the others (no hang on uneven shards).
Tar reading, ``pipe:`` URLs and sample grouping are webdataset's (``gopen``,
``tar_file_expander``, ``group_by_keys``); errors go to a handler that records them and moves
on, without webdataset's 0.5 s sleep per bad sample.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Sequence

import braceexpand
import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from .seeding import BLOCK_SHUFFLE, SHARD_ORDER, SOURCE_MIX, derive_rng

log = logging.getLogger(__name__)

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


def split_evenly(items: Sequence[str], index: int, count: int) -> list[str]:
    """``items[index::count]``; when there are fewer items than parts, every part reads them all
    (parts then overlap, but none is left without data, which would stall its rank)."""
    if not 0 <= index < count:
        raise ValueError(f"part {index} out of range for {count} parts")
    if len(items) < count:
        return list(items)
    return list(items[index::count])


def assign_shards(urls: Sequence[str], rank: int, world_size: int, worker: int,
                  num_workers: int) -> list[str]:
    """The shards one loader worker of one rank reads: first split over ranks, then workers."""
    if len(urls) < world_size:
        log.warning("only %d shard(s) for %d ranks: every rank reads all of them (not disjoint)",
                    len(urls), world_size)
    return split_evenly(split_evenly(urls, rank, world_size), worker, max(1, num_workers))


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
    """An endless, seeded walk through one source's shards for one (rank, worker)."""

    def __init__(self, urls: Sequence[str], key: tuple[int, ...], on_error: ShardErrorHook,
                 state: dict | None = None, label: str = ""):
        if not urls:
            raise ValueError(f"source {label!r}: no shards assigned")
        self.urls = list(urls)
        self.key = key
        self.on_error = on_error
        self.label = label or self.urls[0]
        st = state or {}
        self.epoch = int(st.get("epoch", 0))
        self.pos = int(st.get("pos", 0))
        self.sample = int(st.get("sample", 0))
        self._order = self._order_for(self.epoch)
        self._it: Iterator | None = None
        self._empty_run = 0  # consecutive shards that gave no sample at all

    def _order_for(self, epoch: int) -> list[int]:
        return derive_rng(*self.key, SHARD_ORDER, epoch).permutation(len(self.urls)).tolist()

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "sample": self.sample}

    def _open_current(self) -> None:
        url = self.urls[self._order[self.pos]]
        it = iter_shard(url, self.on_error)
        for _ in range(self.sample):  # resume: skip raw samples, nothing is decoded
            if next(it, None) is None:
                break
        self._it = it
        self._had_sample = self.sample > 0

    def _advance_shard(self) -> None:
        self._empty_run = 0 if self._had_sample else self._empty_run + 1
        if self._empty_run >= len(self.urls):
            raise RuntimeError(
                f"source {self.label!r}: none of its {len(self.urls)} shard(s) gave a sample "
                f"(all unreadable, corrupt or empty): {self.urls[:4]}{' ...' if len(self.urls) > 4 else ''}")
        self.pos += 1
        self.sample = 0
        if self.pos >= len(self.urls):
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
            self.sample += 1
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
