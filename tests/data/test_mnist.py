import pytest
import torch

from addernet.data import DataError, MNISTDataModule
from addernet.data.mnist import RAW_DIR
from data_files import write_image_folders, write_mnist_idx


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_reads_torchvision_idx_files(tmp_path, gz):
    train = write_mnist_idx(tmp_path / RAW_DIR, "train", 20, gz=gz)
    test = write_mnist_idx(tmp_path / RAW_DIR, "test", 8, gz=gz, seed=1)
    dm = MNISTDataModule(root=str(tmp_path), download=False, batch_size=4, augment=False)
    dm.setup()
    x, y = dm.splits["train"].tensors
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], torch.from_numpy(train[0])) and y.tolist() == train[1].tolist()
    assert dm.splits["test"].tensors[1].tolist() == test[1].tolist()
    xb, yb = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert xb.shape == (4, 1, 28, 28) and xb.dtype == torch.float32  # normalised with MNIST's mean and std
    assert dm.num_classes == 10 and dm.class_names[3] == "3"


def test_reads_grayscale_class_folders(tmp_path):
    classes = tuple(str(d) for d in range(10))
    write_image_folders(tmp_path, {"train": 2, "test": 1}, classes=classes, size=(28, 28), ext=".png")
    dm = MNISTDataModule(root=str(tmp_path), download=False)
    dm.setup()
    x, y = dm.splits["train"].tensors
    assert x.shape == (20, 1, 28, 28) and y.tolist() == [i // 2 for i in range(20)]


def test_damaged_or_missing_files_say_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets

    write_mnist_idx(tmp_path / RAW_DIR, "train", 5)
    write_mnist_idx(tmp_path / RAW_DIR, "test", 3)
    (tmp_path / RAW_DIR / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*is missing"):
        MNISTDataModule(root=str(tmp_path), download=False).setup()
    labels_of_another_set = tmp_path / "other" / RAW_DIR
    write_mnist_idx(labels_of_another_set, "train", 6)
    (labels_of_another_set / "train-labels-idx1-ubyte.gz").rename(tmp_path / RAW_DIR / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match="damaged or do not belong together"):
        MNISTDataModule(root=str(tmp_path), download=False).setup()
    monkeypatch.setattr(torchvision.datasets, "MNIST", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    with pytest.raises(DataError, match="MNIST not found under .*data.download=true"):
        MNISTDataModule(root=str(tmp_path / "nowhere"), download=False).prepare_data()
