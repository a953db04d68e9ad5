import torch

from addernet.data.in_memory import random_crop_flip
from addernet.data import SyntheticDataModule


def test_crop_flip_returns_windows_of_the_padded_image():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8)
    out = random_crop_flip(x, padding=2)
    padded = torch.nn.functional.pad(x, (2,) * 4)
    windows = set()
    for n in range(16):
        candidates = [padded[n, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        candidates += [c.flip(-1) for c in candidates]
        matches = [i for i, c in enumerate(candidates) if torch.equal(out[n], c)]
        assert matches, f"image {n} is not a crop of its padded input"
        windows.add(matches[0])
    assert len(windows) > 4  # offsets and flips really vary


def test_batches_are_normalised_on_transfer_and_augmented_only_in_training():
    dm = SyntheticDataModule(num_classes=3, image_size=8, train_size=8, test_size=8, batch_size=8)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    out, labels = dm.on_after_batch_transfer((x, y), 0)  # no trainer: evaluation
    torch.testing.assert_close(out, (x.float() / 255 - 0.5) / 0.5)
    assert torch.equal(labels, y)


def test_a_mid_epoch_position_of_another_number_of_processes_is_refused():
    import pytest

    from addernet.errors import ConfigError

    dm = SyntheticDataModule(num_classes=3, image_size=8, train_size=8, test_size=8, batch_size=8)
    dm.load_state_dict({"epoch": 2, "batches": 0, "processes": 4})  # the end of an epoch: any number will do
    with pytest.raises(ConfigError, match="taken in the middle of an epoch by 2 training processes and this run "
                                          "has 1: resume with as many"):
        dm.load_state_dict({"epoch": 2, "batches": 3, "processes": 2})
