import pytest
import torch

from addernet.data.resumable import EpochPermutation


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_an_epoch_interrupted_and_resumed_sees_every_sample_once_across_processes(processes):
    size, batch, done = 96, 8, 2  # each process trained 2 batches of the epoch before the interruption
    shards = [EpochPermutation(range(size), 7, lambda epoch: 0, processes, rank) for rank in range(processes)]
    resumed = [EpochPermutation(range(size), 7, lambda epoch: done * batch if epoch == 3 else 0, processes, rank)
               for rank in range(processes)]
    seen = []
    for before, after in zip(shards, resumed):
        before.set_epoch(3)
        after.set_epoch(3)
        seen += list(before)[:done * batch] + list(after)
        assert list(after) == list(before)[done * batch:]  # the same order, from where it stopped
    assert sorted(seen) == list(range(size))


def test_the_order_depends_on_seed_and_epoch_only():
    a, b = (EpochPermutation(range(50), 1, lambda epoch: 0) for _ in range(2))
    a.set_epoch(2)
    torch.rand(5)  # the global random state plays no part
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
