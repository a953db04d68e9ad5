import numpy as np
import pytest
import torch

from addernet.data import CIFAR10DataModule, DataError
from addernet.data.cifar10 import CLASSES
from data_files import write_cifar_pickles, write_image_folders


def test_reads_torchvision_pickles(tmp_path):
    written = write_cifar_pickles(tmp_path, per_batch=12)
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, batch_size=8)
    dm.setup()
    train, test = dm.splits["train"].tensors, dm.splits["test"].tensors
    assert train[0].shape == (60, 3, 32, 32) and train[0].dtype == torch.uint8
    assert test[0].shape == (12, 3, 32, 32)
    data, labels = written["data_batch_2"]
    # rows are 1024 red, 1024 green, 1024 blue values, row-major
    assert train[0][12 + 3, 1, 4, 5].item() == data[3, 1024 + 4 * 32 + 5]
    assert train[1][12:24].tolist() == labels


def test_reads_class_folders_of_png_and_jpg(tmp_path):
    write_image_folders(tmp_path, {"train": 3}, ext=".png")
    write_image_folders(tmp_path, {"test": 2}, ext=".jpg", seed=1)
    dm = CIFAR10DataModule(root=str(tmp_path), download=False)
    dm.setup()
    x, y = dm.splits["train"].tensors
    assert x.shape == (30, 3, 32, 32) and y.tolist() == [i // 3 for i in range(30)]
    assert dm.splits["test"].tensors[0].shape == (20, 3, 32, 32)
    from PIL import Image
    first = np.asarray(Image.open(tmp_path / "train" / CLASSES[0] / "0000.png"))
    assert torch.equal(x[0], torch.from_numpy(first).permute(2, 0, 1))  # PNG is lossless
    gray = x[2]  # a grayscale file, converted to three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_missing_data_without_download_says_what_to_do(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted although data.download=false")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataError, match=r"CIFAR-10 not found under .*nowhere.*data.download=true"):
        dm.prepare_data()
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        dm.setup()


def test_failed_download_is_reported_clearly(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="the download failed.*network unreachable"):
        CIFAR10DataModule(root=str(tmp_path), download=True).prepare_data()


def test_root_that_is_a_file(tmp_path):
    path = tmp_path / "cifar.tar.gz"
    path.write_bytes(b"not a folder")
    with pytest.raises(DataError, match="is a file, not a directory"):
        CIFAR10DataModule(root=str(path), download=False).prepare_data()


def test_wrong_class_folders(tmp_path):
    write_image_folders(tmp_path, {"train": 1, "test": 1}, classes=("cats", "dogs"))
    with pytest.raises(DataError, match="expected \\['airplane'"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()


def test_corrupt_pickle_names_the_file(tmp_path):
    write_cifar_pickles(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup()


def test_validation_split_is_carved_from_train(tmp_path):
    write_cifar_pickles(tmp_path, per_batch=10)
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, val_size=15)
    dm.setup()
    assert len(dm.splits["val"]) == 15 and len(dm.splits["train"]) == 35 and len(dm.splits["test"]) == 10
    with pytest.raises(ValueError, match="leaves no training images"):
        CIFAR10DataModule(root=str(tmp_path), download=False, val_size=50).setup()


def test_evaluation_batches_mix_the_classes_of_class_ordered_files(tmp_path):
    write_image_folders(tmp_path, {"train": 2, "test": 8}, ext=".png")
    dm = CIFAR10DataModule(root=str(tmp_path), download=False, batch_size=16)
    dm.setup()
    first = next(iter(dm.test_dataloader()))[1]
    assert len(first.unique()) >= 5  # in file order the first 16 images would be 2 classes
    every = torch.cat([y for _, y in dm.val_dataloader()])
    assert sorted(every.tolist()) == sorted(dm.splits["test"].tensors[1].tolist())  # a full pass sees each once


def test_a_failed_download_leaves_no_directories_behind(tmp_path, monkeypatch):
    import torchvision.datasets

    def unreachable(root, **kwargs):
        from pathlib import Path
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before downloading
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", unreachable)
    dm = CIFAR10DataModule(root=str(tmp_path / "new" / "cifar"), download=True)
    with pytest.raises(DataError, match="the download failed"):
        dm.prepare_data()
    assert not (tmp_path / "new").exists() and tmp_path.exists()
