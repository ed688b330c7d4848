"""What a run reports: JSON lines on rank 0 (one per log step), optional TensorBoard, memory.

Each record: ``step``, ``time``, ``lr``, ``temp``, ``loss`` (sum of weighted stream losses),
``loss/<stream>`` (weighted), ``loss/<stream>/<name>`` (unweighted parts), ``grad_norm/<group>``,
``samples_per_s/<stream>`` and ``tokens_per_s/<stream>`` (whole job: summed over ranks; tokens
= non-pad text tokens + image patch tokens), ``step_time_s``, ``data_wait_s`` (per step,
averaged over the interval), ``mem_mb`` (peak RSS on CPU, peak allocated on GPUs) and any loader
counters (skipped samples / shards). Losses are averaged over the interval and over ranks.
"""
from __future__ import annotations

import time
from collections import defaultdict

from xfm.runtime.metrics import MetricsWriter, memory_mb, read_metrics, require_tensorboard  # noqa: F401 (the run's writer)


def batch_size(stream: str, batch: dict) -> int:
    key = {"pairs": "image", "images": "image", "regions": "text_ids", "text": "text_ids_masked"}[stream]
    return int(batch[key].shape[0])


def batch_tokens(stream: str, batch: dict, num_patches: int) -> int:
    tokens = int(batch["text_mask"].sum()) if "text_mask" in batch else 0
    if "image" in batch:
        tokens += int(batch["image"].shape[0]) * num_patches
    return tokens


class IntervalStats:
    """Sums over the steps since the last log line (local to this rank)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t0 = time.perf_counter()
        self.steps = 0
        self.losses = defaultdict(float)
        self.samples = defaultdict(int)
        self.tokens = defaultdict(int)
        self.data_wait = 0.0
        self.grad_norm = {}

    def add_losses(self, values: dict[str, float]):
        for k, v in values.items():
            self.losses[k] += v


