"""The loaders the engine holds: ``StreamSet`` of one ``Stream`` per configured stream.

``next(streams["pairs"])`` -> a batch dict (INTERFACES.md "Batches"). Each ``Stream`` wraps a
``DataLoader`` over its ``StreamDataset``; batches are re-ordered into a fixed round robin over the
loader workers (0, 1, ..., K-1, 0, ...), continued across a resume from the recorded next worker,
so the sequence of batches is a pure function of (seed, rank, world size, workers, config).
``state_dict()`` holds every worker's position after the last batch handed out; a new set that
loads it yields the same batches an uninterrupted one would. Counters (samples, tokens, batches,
bad samples by reason, bad shards, time spent waiting for data) are exact for consumed batches.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch.utils.data import DataLoader

from .config import STREAM_NAMES, DataConfig
from .dataset import StreamDataset, load_resources
from .shards import reader_count

log = logging.getLogger(__name__)

STATE_VERSION = 1
MAX_BAD_SHARDS_KEPT = 100  # the list in the counters; the count is exact


def _identity(x):
    return x


@dataclass
class StreamCounters:
    batches: int = 0
    samples: int = 0
    tokens: int = 0
    bad: Counter = field(default_factory=Counter)
    bad_shards: list = field(default_factory=list)  # [url, error] (most recent, capped)
    bad_shard_count: int = 0
    wait_s: float = 0.0  # time the caller spent inside next(): data the model waited for

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "samples": self.samples, "tokens": self.tokens,
                "bad": dict(self.bad), "bad_total": sum(self.bad.values()),
                "bad_shards": [list(x) for x in self.bad_shards],
                "bad_shard_count": self.bad_shard_count, "wait_s": self.wait_s}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamCounters":
        return cls(batches=int(d.get("batches", 0)), samples=int(d.get("samples", 0)),
                   tokens=int(d.get("tokens", 0)), bad=Counter(d.get("bad", {})),
                   bad_shards=[tuple(x) for x in d.get("bad_shards", [])],
                   bad_shard_count=int(d.get("bad_shard_count", 0)), wait_s=float(d.get("wait_s", 0.0)))


class Stream:
    """One stream of one rank: an endless iterator of batches with a resumable position."""

    def __init__(self, cfg: DataConfig, name: str, rank: int, world_size: int, seed: int,
                 resources=None):
        if cfg.stream(name) is None:
            raise ValueError(f"stream {name!r} is not configured (data.{name} is null)")
        self.cfg = cfg
        self.name = name
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = cfg.workers_for(name)
        self.counters = StreamCounters()
        self._states: dict[int, dict] = {}
        self._next_worker = 0
        self._loader_iter = None
        self._pending: dict[int, deque] = {}
        self._resources = resources  # callable -> (tokenizer, maskers), shared by a StreamSet
        # a dataset (no workers started) to answer questions about the shard split
        self._dataset = StreamDataset(cfg, name, rank, world_size, seed, self.num_workers)
        scfg = cfg.stream(name)
        self._warn_sample_split()
        log.info("stream %s: rank %d/%d reads %d of %d shard(s) from %d source(s); %d loader worker(s), "
                 "batch %d, shuffle block %d", name, rank, world_size, len(self.shards()),
                 sum(len(u) for u in self._dataset.sources), len(scfg.sources), self.num_workers,
                 scfg.batch_size, scfg.shuffle_buffer)

    def _warn_sample_split(self) -> None:
        """Once per stream and source: a source with fewer shards than (rank, worker) readers is
        split by sample, so each shard is read whole by several readers that keep a share each."""
        readers = reader_count(self.world_size, self.num_workers)
        for src, urls, by_sample in zip(self.cfg.stream(self.name).sources, self._dataset.sources,
                                        self._dataset.sample_split()):
            if by_sample:
                modulus = readers // math.gcd(len(urls), readers)
                log.warning(
                    "stream %s, source %s: %d shard(s) for %d readers (%d rank(s) x %d loader worker(s)): "
                    "split by sample, not by shard - every sample still goes to exactly one reader, but each "
                    "shard is read whole by about %.1f readers (a shard needs >= %d samples to feed all of "
                    "them); give the source %d or more shards to split by shard",
                    self.name, src.name or urls[0], len(urls), readers, self.world_size,
                    max(1, self.num_workers), readers / len(urls), modulus, readers)

    # ------------------------------------------------------------------ iteration
    def _start(self) -> None:
        resources = self._resources() if self._resources is not None else load_resources(self.cfg)
        ds = StreamDataset(self.cfg, self.name, self.rank, self.world_size, self.seed,
                           self.num_workers, self._states, resources=resources)
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.cfg.prefetch_factor, persistent_workers=False)
            if self.cfg.multiprocessing_context:
                kw["multiprocessing_context"] = self.cfg.multiprocessing_context
        # an own generator: by default starting a DataLoader draws its base seed from torch's global
        # RNG, which would shift the trainer's RNG (dropout...) by when the loader happened to start
        gen = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(ds, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                            pin_memory=self.cfg.pin_memory, generator=gen, **kw)
        self._loader_iter = iter(loader)
        self._pending = {w: deque() for w in range(max(1, self.num_workers))}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        if self._loader_iter is None:
            self._start()
        w = self._next_worker
        # the DataLoader hands out worker 0's batch first; after a resume the next batch due may
        # belong to another worker, so hold the early ones until their turn (at most K-1 batches)
        while not self._pending[w]:
            worker, batch, meta = next(self._loader_iter)
            self._pending[worker].append((batch, meta))
        batch, meta = self._pending[w].popleft()
        self._states[w] = meta["state"]
        self._next_worker = (w + 1) % max(1, self.num_workers)
        c = self.counters
        c.batches += 1
        c.samples += meta["samples"]
        c.tokens += meta["tokens"]
        for reason in meta["bad"]:
            if reason not in c.bad and reason != "bad_shard":  # shards are logged by the worker
                log.warning("stream %s rank %d: skipping bad samples (%s); counted in counters()['%s']['bad']",
                            self.name, self.rank, reason, self.name)
        c.bad.update(meta["bad"])
        if meta["bad_shards"]:
            c.bad_shard_count += len(meta["bad_shards"])
            c.bad_shards = (c.bad_shards + [tuple(x) for x in meta["bad_shards"]])[-MAX_BAD_SHARDS_KEPT:]
        c.wait_s += time.perf_counter() - t0
        return batch

    def close(self) -> None:
        """Stop the loader workers (the position is kept: the next ``next()`` restarts them)."""
        it, self._loader_iter = self._loader_iter, None
        self._pending = {}
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    # ------------------------------------------------------------------ state
    def _identity_fields(self) -> dict[str, Any]:
        return {"stream": self.name, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_workers": self.num_workers,
                "batch_size": self.cfg.stream(self.name).batch_size,
                "shuffle_buffer": self.cfg.stream(self.name).shuffle_buffer,
                "sources": [s.urls if isinstance(s.urls, str) else list(s.urls)
                            for s in self.cfg.stream(self.name).sources],
                "sample_split": self._dataset.sample_split()}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self._identity_fields(),
                "next_worker": self._next_worker,
                "workers": {str(w): s for w, s in sorted(self._states.items())},
                "counters": self.counters.as_dict()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continue from ``state``. ``strict=False`` accepts changed source URLs (data moved to
        another place, same shards in the same order); everything else must match."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream {self.name}: state version {state.get('version')!r}, expected {STATE_VERSION}")
        mine = self._identity_fields()
        if not strict:
            mine.pop("sources")
        saved = dict(state)
        # a state without the field comes from a loader that split every source by shard (and had
        # every reader read a source with too few shards whole): the same only where that held
        saved.setdefault("sample_split", [False] * len(mine["sample_split"]))
        diff = {k: (saved.get(k), v) for k, v in mine.items() if saved.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"stream {self.name}: cannot resume exactly, the data setup changed ({detail})")
        self.close()
        self._states = {int(w): s for w, s in state["workers"].items()}
        self._next_worker = int(state["next_worker"])
        self.counters = StreamCounters.from_dict(state.get("counters", {}))

    # ------------------------------------------------------------------ introspection
    def shards(self, worker: int | None = None) -> list[str]:
        """The shard URLs this rank reads (all sources; one worker's when ``worker`` is given)."""
        workers = range(max(1, self.num_workers)) if worker is None else [worker]
        out: list[str] = []
        for w in workers:
            for shares in self._dataset.shards_for(w):
                out.extend(s.url for s in shares if s.url not in out)
        return out


class StreamSet:
    """The configured streams of one rank, in the fixed order ``pairs, regions, text, images``.

    ``rank``/``world_size`` default to ``RANK``/``WORLD_SIZE`` of the environment (or 0/1); pass
    them explicitly where the launcher sets something else (SLURM).
    """

    def __init__(self, cfg: DataConfig, *, rank: int | None = None, world_size: int | None = None,
                 seed: int = 0, streams: Iterable[str] | None = None):
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} out of range for world size {self.world_size}")
        self.seed = int(seed)
        names = list(cfg.enabled if streams is None else streams)
        for n in names:
            if n not in STREAM_NAMES:
                raise ValueError(f"unknown stream {n!r}; known: {list(STREAM_NAMES)}")
            if cfg.stream(n) is None:
                raise ValueError(f"stream {n!r} requested but data.{n} is not configured")
        if not names:
            raise ValueError("no stream configured: set at least one of data.pairs/regions/text/images")
        self.names = [n for n in STREAM_NAMES if n in names]
        self._shared = None
        self.streams = {n: Stream(cfg, n, self.rank, self.world_size, self.seed, resources=self._resources)
                        for n in self.names}

    def _resources(self):
        if self._shared is None:  # the tokenizer and maskers, loaded once for all streams
            self._shared = load_resources(self.cfg)
        return self._shared

    def __getitem__(self, name: str) -> Stream:
        try:
            return self.streams[name]
        except KeyError:
            raise KeyError(f"stream {name!r} is not in this set ({self.names})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.streams

    def next(self, name: str) -> dict[str, torch.Tensor]:
        return next(self[name])

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "streams": {n: s.state_dict() for n, s in self.streams.items()}}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        saved = state.get("streams", {})
        missing = [n for n in self.names if n not in saved]
        if missing:
            raise ValueError(f"data state has no position for stream(s) {missing} (saved: {sorted(saved)})")
        for n, s in self.streams.items():
            s.load_state_dict(saved[n], strict=strict)

    def counters(self) -> dict[str, dict[str, Any]]:
        return {n: s.counters.as_dict() for n, s in self.streams.items()}

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
