"""Streaming pretraining data: one webdataset pipeline per stream, exact resume, counters.

- ``DataConfig`` (typed config, nested by the engine's config under ``data:``), with
  ``StreamConfig`` / ``SourceConfig`` per stream.
- ``StreamSet(cfg, rank=, world_size=, seed=)``: the configured streams of one rank;
  ``next(streams["pairs"])`` -> batch dict (INTERFACES.md "Batches"); ``state_dict()`` /
  ``load_state_dict()`` for exact resume; ``counters()`` -> samples, tokens, bad samples by
  reason, bad shards, data-wait seconds per stream; ``close()``.
- ``measure_loader_throughput(cfg, stream, seconds=|batches=)`` -> dict with ``samples_per_s``.
"""
from .config import (AugmentConfig, DataConfig, MaskingConfig, SourceConfig, StreamConfig,
                     STREAM_NAMES)
from .streams import Stream, StreamCounters, StreamSet
from .throughput import measure_loader_throughput

__all__ = ["AugmentConfig", "DataConfig", "MaskingConfig", "SourceConfig", "StreamConfig",
           "STREAM_NAMES", "Stream", "StreamCounters", "StreamSet", "measure_loader_throughput"]
