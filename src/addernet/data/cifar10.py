"""CIFAR-10 from either on-disk layout: torchvision's pickles or a class-per-folder image tree."""

from __future__ import annotations

import logging
import pickle
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from addernet.data.errors import DataError
from addernet.data.images import check_bad_image_policy, list_class_folders, list_images, load_rgb_array
from addernet.data.in_memory import InMemoryDataModule

log = logging.getLogger(__name__)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PICKLE_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def find_layout(root: Path) -> str | None:
    """``"pickle"`` (torchvision), ``"folders"`` (train/<class>/, test/<class>/) or None."""
    if (root / PICKLE_DIR / TRAIN_BATCHES[0]).is_file():
        return "pickle"
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folders"
    return None


def first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None if ``path`` exists)."""
    path = path.absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def read_pickle_batches(folder: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[b"labels"])
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise DataError(f"cannot read CIFAR-10 batch {path}: {err!r}. Delete {folder} and run again with "
                            f"data.download=true, or restore the file.") from err
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)


def _decode_or_none(path: Path) -> np.ndarray | None:
    try:
        return load_rgb_array(path)
    except DataError:
        return None


def read_class_folders(split_dir: Path, classes: list[str], bad_images: str = "error"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    found = list_class_folders(split_dir)
    if found != classes:
        raise DataError(f"{split_dir} has class folders {found}, expected {classes}")
    files, labels = [], []
    for label, name in enumerate(classes):
        images = list_images(split_dir / name)
        if not images:
            raise DataError(f"class folder {split_dir / name} holds no images ({', '.join(('.png', '.jpg'))}...)")
        files += images
        labels += [label] * len(images)
    log.info(f"decoding {len(files)} images under {split_dir} into memory (once per run)")
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes with the GIL released
        arrays = list(pool.map(load_rgb_array if bad_images == "error" else _decode_or_none, files))
    bad = [f for f, a in zip(files, arrays) if a is None]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable images under {split_dir} (data.bad_images=skip): "
                      f"{', '.join(str(f) for f in bad[:5])}{' ...' if len(bad) > 5 else ''}")
        labels = [label for label, a in zip(labels, arrays) if a is not None]
        arrays = [a for a in arrays if a is not None]
    shapes = {a.shape for a in arrays}
    if shapes != {(32, 32, 3)}:
        raise DataError(f"CIFAR-10 images must be 32x32, found shapes {sorted(shapes)} under {split_dir}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 under ``root``, in torchvision's layout (downloaded if missing and ``download``) or as
    ``train/<class>/*`` and ``test/<class>/*`` image folders; the layout is detected."""

    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(self, root: str = "data", download: bool = True, bad_images: str = "error", **kwargs):
        super().__init__(**kwargs)
        self.root, self.download = Path(root).expanduser(), download
        self.bad_images = check_bad_image_policy(bad_images)

    @property
    def num_classes(self) -> int:
        return len(CLASSES)

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES)

    def _missing(self, why: str) -> DataError:
        return DataError(
            f"CIFAR-10 not found under {self.root.resolve()}: {why}. Expected either torchvision's layout "
            f"({self.root}/{PICKLE_DIR}/data_batch_1..5, test_batch) or image folders "
            f"({self.root}/train/<class>/*.png|jpg and {self.root}/test/<class>/...). Set data.root=<dir> "
            f"(or DATA_DIR in .env)" + (", or check the network connection (or download it elsewhere)."
                                        if self.download else ", or data.download=true to fetch it."))

    def prepare_data(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"data.root={self.root} is a file, not a directory: point data.root at a folder")
        if find_layout(self.root) is not None:
            return
        if not self.download:
            raise self._missing("no known layout there and data.download=false")
        from torchvision.datasets import CIFAR10
        created = first_missing(self.root)  # what the download creates, and removes again if it fails
        try:
            for train in (True, False):
                CIFAR10(str(self.root), train=train, download=True)
        except Exception as err:  # network errors come in many types
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise self._missing(f"the download failed ({err!r})") from err

    def load(self):
        layout = find_layout(self.root)
        if layout is None:  # setup() without prepare_data(), as in eval
            self.prepare_data()
            layout = find_layout(self.root)
        if layout == "pickle":
            folder = self.root / PICKLE_DIR
            return (*read_pickle_batches(folder, TRAIN_BATCHES), *read_pickle_batches(folder, TEST_BATCHES))
        classes = list(CLASSES)
        return (*read_class_folders(self.root / "train", classes, self.bad_images),
                *read_class_folders(self.root / "test", classes, self.bad_images))
