"""Every random choice of the loaders comes from a generator derived from integers.

``derive_rng(seed, stream, rank, worker, purpose, index...)`` gives the same numbers on every run
and in every process, so the stream a worker produces is a pure function of (seed, stream,
rank, worker) and a position; that is what makes exact resume possible. Libraries that draw
from the global RNGs run inside ``xfm.runtime.seeding.global_rngs_seeded(sample_seed(rng))``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

# purposes: separate sequences for separate decisions
SHARD_ORDER, SOURCE_MIX, BLOCK_SHUFFLE, SAMPLE = 1, 2, 3, 4


def derive_rng(*key: int) -> np.random.Generator:
    if any(k < 0 for k in key):
        raise ValueError(f"seed key parts must be >= 0, got {key}")
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def sample_seed(rng: np.random.Generator) -> int:
    """One integer for ``xfm.runtime.seeding.global_rngs_seeded``, drawn from a sample's ``rng``."""
    return int(rng.integers(0, 2**31 - 1))


def stable_id(text: str) -> int:
    """A 63-bit integer id for a string, the same in every process and run (not ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def source_image_id(source: str, image_id: str | int) -> int:
    """The id of one picture in a mix of datasets: ``image_id`` namespaced by its ``source``, so
    COCO's 42 and Visual Genome's 42 differ while every caption of one picture shares one id
    (soft ITC targets and ITM negative exclusion compare these). Integer and string forms of an
    ``image_id`` are the same picture ("42" == 42), as the shard writer stores them as strings."""
    return stable_id(json.dumps([source, str(image_id)]))
