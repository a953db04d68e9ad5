"""Training order that can resume in the middle of an epoch and replay exactly the same batches.

The order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``, so it does not
depend on the history of the process. Lightning tells the sampler the epoch (``set_epoch``, from its
restored progress on resume); the data module keeps how many batches of the epoch were trained in every
checkpoint (``LightningDataModule.state_dict``), and the first epoch after a resume skips them. The sampler
is consulted lazily, when the first batch of an epoch is drawn, so it sees the restored position even though
Lightning creates the epoch's iterator earlier.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import Sampler


class EpochPermutation(Sampler[int]):
    def __init__(self, size: int, seed: int, skip_for: Callable[[int], int]):
        self.size, self.seed, self.skip_for = size, seed, skip_for
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        return iter(order[self.skip_for(self.epoch):].tolist())


def evaluation_order(size: int, seed: int = 0) -> list[int]:
    """A fixed shuffled order for evaluation splits. Files are read class by class, so in file order a
    partial evaluation (``limit_val_batches``, ``limit_test_batches``) would see a few classes only; in this
    order any first batches are a sample of all classes, and a full evaluation is unchanged."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
