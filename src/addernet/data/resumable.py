"""Training order that can resume in the middle of an epoch and replay exactly the same batches, on one
process or several (DDP).

The order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``, so it does not
depend on the history of the process; with several processes each takes its shard of it, as torch's
``DistributedSampler`` does (it is one, so Lightning uses it as it is instead of wrapping it). Lightning tells
the sampler the epoch (``set_epoch``, from its restored progress on resume); the data module keeps how many
batches of the epoch each process trained in every checkpoint (``LightningDataModule.state_dict``), and the
first epoch after a resume skips them, in each process's own shard. The sampler is consulted lazily, when the
first batch of an epoch is drawn, so it sees the restored position even though Lightning creates the epoch's
iterator earlier.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, Sized

import torch
from torch.utils.data import DistributedSampler


class EpochPermutation(DistributedSampler):
    """``DistributedSampler`` (no padding beyond its own, no process group needed: the shard is given) whose
    epoch starts ``skip_for(epoch)`` samples into this process's shard."""

    def __init__(self, dataset: Sized, seed: int, skip_for: Callable[[int], int], num_replicas: int = 1,
                 rank: int = 0, shuffle: bool = True):
        # DistributedSampler seeds its generator with seed + epoch; this keeps the order of earlier versions
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed * 100_003)
        self.skip_for = skip_for

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip_for(self.epoch), None)


def evaluation_order(size: int, seed: int = 0) -> list[int]:
    """A fixed shuffled order for evaluation splits. Files are read class by class, so in file order a
    partial evaluation (``limit_val_batches``, ``limit_test_batches``) would see a few classes only; in this
    order any first batches are a sample of all classes, and a full evaluation is unchanged."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
