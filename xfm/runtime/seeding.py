"""Seeding the process-global RNGs around one sample's random choices.

Libraries that draw from the global RNGs (timm's RandAugment uses ``random`` and
``numpy.random``, torchvision's crop sampler uses torch's) run inside ``global_rngs_seeded``,
which seeds them from one integer and restores them afterwards: a sample's augmentation is then a
function of that integer (exact resume), and with ``num_workers=0`` the training process's own
RNGs (dropout) do not move. Both the pretraining loaders and the fine-tuning datasets use it.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


@contextlib.contextmanager
def global_rngs_seeded(seed: int):
    """Seed ``random``, ``numpy.random`` and torch's CPU RNG with ``seed``; restore them after."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        # CPU only: torch.manual_seed also queues the seeding of every lazily initialised device,
        # recording a Python stack trace for each (a third of a small fine-tuning step)
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
