"""Which streams run in a step: a pure function of (config, seed, step).

ZeRO-3 hangs as soon as two ranks call different modules in a micro-step (one rank skipping the
vision encoder waits forever for the other's all-gather; docs/DESIGN.md, pitfalls). So the plan never
looks at anything rank-local - no per-rank RNG, no "which loader had data" - only at the step
number and the config, which every rank shares.
"""
from __future__ import annotations

import numpy as np

from xfm.pretrain.config import StreamsConfig


def plan_for_step(streams: StreamsConfig, seed: int, step: int) -> list[list[str]]:
    """The optimizer-step groups to run at ``step``, in order; streams inside a group in order."""
    groups = [list(g) for g in streams.step_groups]
    if streams.mode == "all":
        return groups
    probs = np.asarray(streams.group_probs or [1.0] * len(groups), dtype=np.float64)
    rng = np.random.default_rng([seed, step, 0x5EED])  # shared by all ranks: (seed, step) only
    return [groups[int(rng.choice(len(groups), p=probs / probs.sum()))]]


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """A per-(step, rank) seed for objective-side sampling (hard negatives): reproducible after
    a resume without saving generator state."""
    return int(np.random.SeedSequence([seed, step, rank, salt]).generate_state(1)[0])
