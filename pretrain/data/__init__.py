"""Streaming pretraining data: one webdataset pipeline per stream, exact resume, counters.

- ``DataConfig`` (typed config, nested by the engine's config under ``data:``), with
  ``StreamConfig`` / ``SourceConfig`` per stream.
- ``StreamSet(cfg, rank=, world_size=, seed=)``: the configured streams of one rank;
  ``next(streams["pairs"])`` -> batch dict (INTERFACES.md "Batches"); ``state_dict()`` /
  ``load_state_dict()`` for exact resume; ``counters()`` -> samples, tokens, bad samples by
  reason, bad shards, data-wait seconds per stream; ``close()``.
- ``measure_loader_throughput(cfg, stream, seconds=|batches=)`` -> dict with ``samples_per_s``.
See README.md beside this file for the design.
"""
from .config import (AugmentConfig, DataConfig, MaskingConfig, SourceConfig, StreamConfig,
                     STREAM_NAMES)

_LAZY = {"Stream": "streams", "StreamCounters": "streams", "StreamSet": "streams",
         "measure_loader_throughput": "throughput"}


def __getattr__(name):
    # lazy: reading a config must not import timm/torchvision (seconds); the loaders do, once, in
    # the main process, before their workers fork
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AugmentConfig", "DataConfig", "MaskingConfig", "SourceConfig", "StreamConfig",
           "STREAM_NAMES", "Stream", "StreamCounters", "StreamSet", "measure_loader_throughput"]
