"""What a run reports: JSON lines on rank 0 (one per log step), optional TensorBoard, memory.

Each record: ``step``, ``time``, ``lr``, ``temp``, ``loss`` (sum of weighted stream losses),
``loss/<stream>`` (weighted), ``loss/<stream>/<name>`` (unweighted parts), ``grad_norm/<group>``,
``samples_per_s/<stream>`` and ``tokens_per_s/<stream>`` (whole job: summed over ranks; tokens
= non-pad text tokens + image patch tokens), ``step_time_s``, ``data_wait_s`` (per step,
averaged over the interval), ``mem_mb`` (peak RSS on CPU, peak allocated on GPUs) and any loader
counters (skipped samples / shards). Losses are averaged over ranks and over the steps of the
interval in which they were computed: with ``streams.mode: sample`` a stream that ran in 3 of 10
steps is averaged over those 3; ``loss`` is the mean over the interval's steps of each step's
summed weighted loss (whatever groups that step ran).
"""
from __future__ import annotations

import time
from collections import defaultdict

from xfm.runtime.metrics import MetricsWriter, memory_mb, read_metrics, require_tensorboard  # noqa: F401 (the run's writer)


def batch_size(stream: str, batch: dict) -> int:
    from xfm.objectives.streams import batch_rows

    return batch_rows(stream, batch)


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
        self.losses = defaultdict(float)  # key -> sum over the steps that computed it
        self.loss_steps = defaultdict(int)  # key -> how many steps computed it
        self.total_loss = 0.0  # sum over steps of the step's summed weighted loss
        self._step = {}  # this step's values so far
        self.samples = defaultdict(int)
        self.tokens = defaultdict(int)
        self.data_wait = 0.0
        self.grad_norm = {}

    def add_losses(self, values: dict):
        """Values of the current step (micro-steps add up); floats or detached tensors."""
        for k, v in values.items():
            self._step[k] = self._step[k] + v if k in self._step else v

    def end_step(self) -> None:
        for k, v in self._step.items():
            self.losses[k] += v
            self.loss_steps[k] += 1
        self.total_loss += sum(v for k, v in self._step.items() if k.count("/") == 1 and k.startswith("loss/"))
        self._step = {}
        self.steps += 1

    def mean_losses(self) -> dict[str, float]:
        """Each key averaged over the steps that computed it, plus ``loss`` over all steps."""
        out = {k: float(v) / self.loss_steps[k] for k, v in self.losses.items()}
        if self.steps:
            out["loss"] = float(self.total_loss) / self.steps
        return out


