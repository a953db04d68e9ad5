"""CIFAR-10 from either on-disk layout: torchvision's pickles or a class-per-folder image tree."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from addernet.data.errors import DataError
from addernet.data.on_disk import OnDiskDataModule

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PICKLE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def read_pickle_batches(folder: Path, names: tuple[str, ...], label_key: bytes = b"labels"
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's CIFAR pickles (CIFAR-100 keeps its labels under b"fine_labels")."""
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[label_key])
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise DataError(f"cannot read CIFAR batch {path}: {err!r}. Delete {folder} and run again with "
                            f"data.download=true, or restore the file.") from err
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


class CIFAR10DataModule(OnDiskDataModule):
    """CIFAR-10 under ``root``, in torchvision's layout (downloaded if missing and ``download``) or as
    ``train/<class>/*`` and ``test/<class>/*`` image folders; the layout is detected."""

    name = "CIFAR-10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    image_shape = (32, 32, 3)
    classes = CLASSES

    def expected(self) -> str:
        return (f"either torchvision's layout ({self.root}/{PICKLE_DIR}/data_batch_1..5, test_batch) or image "
                f"folders ({self.root}/train/<class>/*.png|jpg and {self.root}/test/<class>/...)")

    def native_layout(self) -> bool:
        return (self.root / PICKLE_DIR / TRAIN_BATCHES[0]).is_file()

    def fetch(self) -> None:
        from torchvision.datasets import CIFAR10

        for train in (True, False):
            CIFAR10(str(self.root), train=train, download=True)

    def load_native(self):
        folder = self.root / PICKLE_DIR
        return (*read_pickle_batches(folder, TRAIN_BATCHES), *read_pickle_batches(folder, TEST_BATCHES))
