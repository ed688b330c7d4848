"""The per-worker loop of one stream: read -> skip bad -> decode/augment/tokenise/mask -> batch.

``StreamDataset`` is a torch ``IterableDataset``; every DataLoader worker runs ``__iter__`` with
its own slice of the shards and yields ``(worker_id, batch, meta)`` for ever. ``meta`` carries
what the main process needs to resume and to count: the worker's position after this batch,
the samples and tokens in it, and the bad samples / shards met since the previous batch. Because
the position travels with the batch, a checkpoint records exactly what the trainer consumed,
never what was only prefetched.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .config import STREAM_NAMES, DataConfig
from .samples import DECODERS
from .seeding import SAMPLE, derive_rng
from .shards import (BlockShuffler, ShardShare, SourceMixer, SourceReader, assign_shards,
                     expand_urls, splits_by_sample)
from .transforms import BadSample

log = logging.getLogger(__name__)

# a worker that meets this many bad samples in a row stops with an error: the data, or the
# stream it was given to, is wrong (e.g. text shards listed under images)
MAX_BAD_IN_A_ROW = 1000


def build_maskers(cfg: DataConfig, tokenizer):
    """(text MLM, fusion MLM, MIM block) maskers of ``xfm.masking`` from the config."""
    from xfm.masking import TextMasker, WordBoundaries, block_masker_for

    m = cfg.masking
    bounds = WordBoundaries.from_tokenizer(tokenizer)
    common = dict(whole_word=m.whole_word, mask_frac=m.mask_frac, random_frac=m.random_frac,
                  vocab_size=m.random_vocab_size)
    text = TextMasker(bounds, m.text_mask_prob, m.text_max_masks, span_prob=m.text_span_prob,
                      span_lengths=m.text_span_lengths, **common)
    fusion = TextMasker(bounds, m.fusion_mask_prob, m.fusion_max_masks, span_prob=m.fusion_span_prob,
                        span_lengths=m.text_span_lengths, **common)
    grid = cfg.grid
    kw = {"min_block": m.mim_min_block, "aspect": tuple(m.mim_aspect)}
    if m.mim_num_masks is not None:
        kw["ratio"] = m.mim_num_masks / (grid * grid)
    return text, fusion, block_masker_for(grid, **kw)


def load_resources(cfg: DataConfig):
    """(tokenizer, (text MLM, fusion MLM, MIM block) maskers) for ``cfg``."""
    from xfm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer)
    return tokenizer, build_maskers(cfg, tokenizer)


class StreamDataset(IterableDataset):
    """One stream of one rank; picklable (``spawn`` workers work too)."""

    def __init__(self, cfg: DataConfig, stream: str, rank: int, world_size: int, seed: int,
                 num_workers: int, states: dict[int, dict] | None = None, resources=None):
        if stream not in STREAM_NAMES:
            raise ValueError(f"unknown stream {stream!r}; known: {list(STREAM_NAMES)}")
        if cfg.stream(stream) is None:
            raise ValueError(f"stream {stream!r} is not configured (data.{stream} is null)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.cfg = cfg
        self.stream = stream
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_workers = num_workers
        self.states = dict(states or {})
        # (tokenizer, (text, fusion, block) maskers) made once in the main process: forked workers
        # inherit them instead of each importing transformers and scanning the vocabulary again
        self.resources = resources
        self.sources = [expand_urls(s.urls) for s in cfg.stream(stream).sources]

    def key(self, worker: int) -> tuple[int, ...]:
        return (self.seed, STREAM_NAMES.index(self.stream), self.rank, worker)

    def shards_for(self, worker: int) -> list[list[ShardShare]]:
        """Per source, what worker ``worker`` of this rank reads (whole shards or parts of them)."""
        return [assign_shards(urls, self.rank, self.world_size, worker, self.num_workers)
                for urls in self.sources]

    def sample_split(self) -> list[bool]:
        """Per source, whether it is split below the shard (fewer shards than ranks x workers)."""
        return [splits_by_sample(len(urls), self.world_size, self.num_workers) for urls in self.sources]

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, Any]]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        n = info.num_workers if info is not None else 0
        if n != self.num_workers:
            raise RuntimeError(f"stream {self.stream}: built for {self.num_workers} workers, run by {n}")
        return self._run(worker)

    def _run(self, worker: int):
        scfg = self.cfg.stream(self.stream)
        key = self.key(worker)
        bad: Counter = Counter()
        bad_shards: list[tuple[str, str]] = []
        replaying = [False]

        warned: set[str] = set()

        def on_shard_error(url: str, exn: BaseException) -> None:
            if replaying[0]:  # re-reading a block on resume: already counted before the checkpoint
                return
            msg = f"{type(exn).__name__}: {exn}"
            # counted every time it is met (once per epoch), logged once per worker
            (log.debug if url in warned else log.warning)(
                "stream %s rank %d worker %d: skipping shard %s (%s)", self.stream, self.rank, worker, url, msg)
            warned.add(url)
            bad["bad_shard"] += 1
            bad_shards.append((url, msg))

        shard_lists = self.shards_for(worker)
        labels = [s.name or (s.urls if isinstance(s.urls, str) else s.urls[0]) for s in scfg.sources]

        def make_mixer(start: dict | None) -> SourceMixer:
            src_states = (start or {}).get("sources") or [None] * len(shard_lists)
            readers = [SourceReader(shares, key + (i,), on_shard_error, st, label=labels[i])
                       for i, (shares, st) in enumerate(zip(shard_lists, src_states))]
            return SourceMixer(readers, [s.weight for s in scfg.sources], key,
                               draws=int((start or {}).get("draws", 0)))

        state = self.states.get(worker) or {}
        replaying[0] = True
        shuffler = BlockShuffler(make_mixer, scfg.shuffle_buffer, key, state.get("position"))
        replaying[0] = False
        batches = int(state.get("batches", 0))

        tokenizer, maskers = self.resources or load_resources(self.cfg)
        decoder = DECODERS[self.stream](self.cfg, tokenizer, *maskers)
        in_a_row = 0
        unexpected_logged = False
        try:
            while True:
                examples = []
                while len(examples) < scfg.batch_size:
                    index, raw = shuffler.next_raw()
                    try:
                        examples.append(decoder.decode(raw, derive_rng(*key, SAMPLE, index)))
                        in_a_row = 0
                        continue
                    except BadSample as exn:
                        reason, err = exn.reason, exn
                        log.debug("stream %s: skipping sample %s of %s: %s", self.stream,
                                  raw.get("__key__"), raw.get("__url__"), exn)
                    except Exception as exn:  # e.g. an image PIL decodes but a transform rejects
                        reason, err = "decode_error", exn
                        if not unexpected_logged:  # with its traceback, once per worker
                            log.warning("stream %s: skipping sample %s of %s", self.stream,
                                        raw.get("__key__"), raw.get("__url__"), exc_info=True)
                            unexpected_logged = True
                    bad[reason] += 1
                    in_a_row += 1
                    if in_a_row >= MAX_BAD_IN_A_ROW:  # the data or the code is wrong, not a sample
                        raise RuntimeError(
                            f"stream {self.stream} rank {self.rank} worker {worker}: {in_a_row} bad "
                            f"samples in a row (last: sample {raw.get('__key__')!r} of {raw.get('__url__')}: "
                            f"{type(err).__name__}: {err})") from err
                batch = decoder.collate(examples)
                batches += 1
                meta = {
                    "state": {"position": shuffler.state(), "batches": batches},
                    "samples": len(examples),
                    "tokens": decoder.tokens(batch),
                    "bad": dict(bad),
                    "bad_shards": list(bad_shards),
                }
                bad.clear()
                bad_shards.clear()
                yield worker, batch, meta
        finally:
            shuffler.close()
