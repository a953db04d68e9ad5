"""MNIST from either on-disk layout: torchvision's IDX files (gzipped or not) or class folders of 28x28 images."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from addernet.data.errors import DataError
from addernet.data.on_disk import OnDiskDataModule

RAW_DIR = Path("MNIST") / "raw"  # where torchvision puts the files
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def _open_idx(folder: Path, name: str) -> bytes:
    for candidate, opener in ((folder / name, open), (folder / f"{name}.gz", gzip.open)):
        if candidate.is_file():
            with opener(candidate, "rb") as f:
                return f.read()
    raise DataError(f"MNIST file {folder / name}(.gz) is missing: restore it, or delete {folder} and run "
                    f"with data.download=true")


def read_idx(folder: Path, images_name: str, labels_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IDX files (big-endian header: magic, count[, rows, cols]) -> uint8 (N, 1, 28, 28) and labels."""
    images, labels = _open_idx(folder, images_name), _open_idx(folder, labels_name)
    magic, count, rows, cols = np.frombuffer(images[:16], dtype=">i4") if len(images) >= 16 else (0, 0, 0, 0)
    label_magic, label_count = np.frombuffer(labels[:8], dtype=">i4") if len(labels) >= 8 else (0, 0)
    if magic != IMAGE_MAGIC or label_magic != LABEL_MAGIC or len(images) != 16 + count * rows * cols or \
            len(labels) != 8 + label_count or count != label_count:
        raise DataError(f"MNIST files {folder / images_name} and {labels_name} are damaged or do not belong "
                        f"together: delete {folder} and run again with data.download=true")
    pixels = np.frombuffer(images, dtype=np.uint8, offset=16).reshape(count, 1, rows, cols)
    return torch.from_numpy(pixels.copy()), torch.from_numpy(np.frombuffer(labels, np.uint8, offset=8).astype(np.int64))


class MNISTDataModule(OnDiskDataModule):
    """MNIST under ``root``: torchvision's layout (``MNIST/raw/*-ubyte[.gz]``, downloaded if missing and
    ``download``) or ``train/<digit>/*`` and ``test/<digit>/*`` image folders (read as grayscale)."""

    name = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)
    image_shape = (28, 28, 1)
    classes = tuple(str(d) for d in range(10))

    def expected(self) -> str:
        return (f"either torchvision's layout ({self.root}/{RAW_DIR}/train-images-idx3-ubyte[.gz] and the other "
                f"three files) or image folders ({self.root}/train/<digit>/*.png and {self.root}/test/<digit>/...)")

    def native_layout(self) -> bool:
        folder = self.root / RAW_DIR
        return any((folder / f"{FILES['train'][0]}{ext}").is_file() for ext in ("", ".gz"))

    def fetch(self) -> None:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(self.root), train=train, download=True)

    def load_native(self):
        folder = self.root / RAW_DIR
        return (*read_idx(folder, *FILES["train"]), *read_idx(folder, *FILES["test"]))
