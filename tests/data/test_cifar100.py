import pickle

import numpy as np
import torch

from addernet.data import CIFAR100DataModule
from addernet.data.cifar100 import PICKLE_DIR
from data_files import write_image_folders


def write_cifar100_pickles(root, per_split: dict, seed: int = 0) -> dict:
    """torchvision's CIFAR-100 python layout: train/test dicts with b"data" and b"fine_labels", and meta."""
    rng = np.random.default_rng(seed)
    folder = root / PICKLE_DIR
    folder.mkdir(parents=True)
    written = {}
    for split, count in per_split.items():
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, count)]
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [0] * count}, f, protocol=2)
        written[split] = (data, fine)
    names = [f"class_{i:03d}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": []}, f, protocol=2)
    return written


def test_reads_torchvision_pickles_with_the_class_names_of_the_data(tmp_path):
    written = write_cifar100_pickles(tmp_path, {"train": 30, "test": 10})
    dm = CIFAR100DataModule(root=str(tmp_path), download=False)
    assert dm.num_classes == 100 and dm.class_names[7] == "class_007"
    dm.setup()
    x, y = dm.splits["train"].tensors
    assert x.shape == (30, 3, 32, 32) and y.tolist() == written["train"][1]
    assert x[4, 2, 1, 3].item() == written["train"][0][4, 2048 + 32 + 3]


def test_class_folders_name_their_classes(tmp_path):
    classes = ("apple", "bee", "cloud")
    write_image_folders(tmp_path, {"train": 2, "test": 1}, classes=classes, ext=".png")
    dm = CIFAR100DataModule(root=str(tmp_path), download=False)
    assert dm.class_names == list(classes) and dm.num_classes == 3
    dm.setup()
    assert dm.splits["test"].tensors[0].shape == (3, 3, 32, 32) and torch.equal(
        dm.splits["train"].tensors[1], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert CIFAR100DataModule(root=str(tmp_path / "not-yet"), download=False).num_classes == 100
