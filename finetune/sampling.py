"""Map-style data for fine-tuning: epochs, a resumable distributed sampler, evaluation that sees
every example exactly once across ranks, and per-example seeding of augmentation.

- ``TrainSampler``: each epoch one permutation seeded by (seed, epoch), shared by all ranks,
  split rank-strided into equal-size shards (the tail that does not fill a whole global batch
  is dropped, as DistributedSampler(drop_last=True) does, so every rank runs the same number of
  steps: ZeRO-3 hangs otherwise). ``start_batch`` resumes mid-epoch without reading the skipped
  examples.
- ``EvalSampler``: rank r takes examples r, r + W, ...; ranks with one example fewer get a
  padding slot (index -1) so every rank runs the same number of batches; the loop drops padding
  before metrics, so each example counts once.
- ``SeededItems``: item ``i`` of epoch ``e`` is built with python/numpy/torch RNGs seeded by
  (seed, e, i), whichever loader worker builds it, so augmentation is the same after a resume.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from xfm.runtime.seeding import global_rngs_seeded

PAD_INDEX = -1


class TrainSampler(Sampler[int]):
    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True, multiple_of: int = 1):
        self.size, self.batch_size, self.multiple_of = size, batch_size, multiple_of
        self.rank, self.world, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {size} examples, fewer than one optimizer step "
                             f"({batch_size} x {world_size} ranks x {multiple_of} accumulation): lower train.batch_size")

    @property
    def batches_per_epoch(self) -> int:
        # whole optimizer steps only (gradient accumulation never straddles two epochs)
        return self.size // (self.batch_size * self.world) // self.multiple_of * self.multiple_of

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, self.epoch, 0x7A1]).permutation(self.size)

    def __iter__(self):
        n = self.batches_per_epoch * self.batch_size * self.world
        mine = self._order()[:n][self.rank::self.world]
        return iter(int(i) for i in mine[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class EvalSampler(Sampler[int]):
    def __init__(self, size: int, rank: int, world_size: int):
        self.size, self.rank, self.world = size, rank, world_size

    def __iter__(self):
        per_rank = math.ceil(self.size / self.world)
        mine = list(range(self.rank, self.size, self.world))
        return iter(mine + [PAD_INDEX] * (per_rank - len(mine)))

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)


class SeededItems(Dataset):
    """Wraps a task dataset: ``__getitem__(i)`` seeds every RNG from (seed, epoch, i), calls the
    dataset and records ``index`` (padding slots of ``EvalSampler`` repeat item 0, marked -1)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        real = 0 if i == PAD_INDEX else i
        seed = int(np.random.SeedSequence([self.seed, self.epoch, real]).generate_state(1)[0])
        with global_rngs_seeded(seed):
            item = dict(self.dataset[real])
        item["index"] = i
        return item


def collate_with_index(task, train: bool):
    def collate(items):
        batch = task.collate(items, train)
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        return batch

    return collate
