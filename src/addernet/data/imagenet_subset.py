"""An ImageNet-style folder tree, or a subset of it: ``root/train/<wnid>/*`` and ``root/val/<wnid>/*``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from addernet.data.errors import DataError
from addernet.data.resumable import evaluation_order
from addernet.data.images import check_bad_image_policy, list_class_folders, list_images, load_rgb, split_dir

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFiles(Dataset):
    """Image files decoded when read; with ``bad_images="skip"`` an unreadable file is replaced by the next
    readable one, with a warning and a count (per loader worker)."""

    def __init__(self, samples: list[tuple[Path, int]], transform: Callable, bad_images: str = "error"):
        self.samples, self.transform, self.bad_images = samples, transform, bad_images
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return self.transform(load_rgb(path)), label
            except DataError:
                if self.bad_images == "error":
                    raise
                self.skipped += 1
                warnings.warn(f"skipped unreadable image {path} ({self.skipped} so far, data.bad_images=skip)")
        raise DataError(f"no readable image among the {len(self.samples)} files of this split")


class ImageNetSubsetDataModule(pl.LightningDataModule):
    """The first ``num_classes`` classes (sorted), or the listed ``classes``, at most ``max_per_class`` images
    each; standard training (random-resized crop, flip) and evaluation (resize, centre crop) transforms."""

    def __init__(self, root: str = "data/imagenet", num_classes: int | None = 100,
                 classes: Sequence[str] | None = None, max_per_class: int | None = None, image_size: int = 224,
                 resize_size: int | None = None, batch_size: int = 256, num_workers: int = 8,
                 pin_memory: bool = True, train_split: str = "train", val_split: str = "val",
                 bad_images: str = "error"):
        super().__init__()
        self.root = Path(root).expanduser()
        self.requested_classes = list(classes) if classes else None
        self.requested_num_classes, self.max_per_class = num_classes, max_per_class
        self.image_size, self.resize_size = image_size, resize_size or round(image_size * 256 / 224)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.train_split, self.val_split = train_split, val_split
        self.bad_images = check_bad_image_policy(bad_images)
        self._classes: list[str] | None = None
        self.datasets: dict[str, ImageFiles] = {}

    def _split_dir(self, split: str) -> Path:
        return split_dir(self.root, split, "ImageNet subset", f"{self.root}/{self.train_split}/<class>/*.JPEG and "
                         f"{self.root}/{self.val_split}/<class>/*.JPEG")

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            available = list_class_folders(self._split_dir(self.train_split))
            if self.requested_classes:
                unknown = sorted(set(self.requested_classes) - set(available))
                if unknown:
                    raise DataError(f"data.classes names folders that {self.root / self.train_split} lacks: {unknown}")
                self._classes = list(self.requested_classes)
            else:
                n = self.requested_num_classes or len(available)
                if n > len(available):
                    raise DataError(f"data.num_classes={n} but {self.root / self.train_split} has only "
                                    f"{len(available)} class folders: set data.num_classes={len(available)} or "
                                    f"less, or data.num_classes=null to take them all")
                self._classes = available[:n]
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return self.classes

    def _samples(self, split: str) -> list[tuple[Path, int]]:
        split_dir, samples = self._split_dir(split), []
        for label, name in enumerate(self.classes):
            folder = split_dir / name
            images = list_images(folder) if folder.is_dir() else []
            if not images:
                raise DataError(f"class {name!r} has no images in {folder}")
            samples += [(p, label) for p in images[:self.max_per_class]]
        return samples

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        normalize = [T.ToTensor(), T.Normalize(MEAN, STD)]
        train_tf = T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), *normalize])
        eval_tf = T.Compose([T.Resize(self.resize_size), T.CenterCrop(self.image_size), *normalize])
        val = ImageFiles(self._samples(self.val_split), eval_tf, self.bad_images)
        train_samples = self._samples(self.train_split)
        train = ImageFiles(train_samples, train_tf, self.bad_images)
        self.datasets = {"train": train, "val": val, "test": val,
                         "calibration": ImageFiles(train_samples, eval_tf, self.bad_images)}

    def calibration_loader(self, batches: int) -> DataLoader:
        """``batches`` batches of training images with the evaluation transform, a seeded draw (BatchNorm
        recalibration)."""
        order = torch.randperm(len(self.datasets["calibration"]), generator=torch.Generator().manual_seed(0))
        subset = Subset(self.datasets["calibration"], order[:batches * self.batch_size].tolist())
        return DataLoader(subset, batch_size=self.batch_size, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(0))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        order = None if shuffle else evaluation_order(len(self.datasets[split]))  # classes mixed, see there
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle, sampler=order,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
