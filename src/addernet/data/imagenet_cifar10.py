"""ImageNet images of CIFAR-10's classes, at CIFAR-10's size: how a CIFAR-10 model transfers to another
distribution.

The WordNet IDs of each CIFAR-10 class are CINIC-10's (``cinic10_synsets.tsv``, its source and licence in its
header). Images are read from an ImageNet folder tree (``root/train/<wnid>/*``, ``root/val/<wnid>/*``; the
synset folders that are not in the mapping are ignored) and shrunk whole to 32x32 with Pillow's box filter, as
CINIC-10 made its images; they are labelled with CIFAR-10's class indices and normalised with CIFAR-10's
statistics, so a model trained on ``data=cifar10`` reads them as it read CIFAR-10.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from addernet.data.cifar10 import CLASSES, CIFAR10DataModule
from addernet.data.errors import DataError
from addernet.data.images import check_bad_image_policy, list_images, load_rgb, split_dir
from addernet.data.in_memory import InMemoryDataModule
from addernet.data.on_disk import decode_images

SYNSETS_FILE = Path(__file__).with_name("cinic10_synsets.tsv")
SIZE = 32
log = logging.getLogger(__name__)


@cache
def synset_classes() -> dict[str, int]:
    """WordNet ID -> CIFAR-10 class index, from CINIC-10's mapping."""
    mapping = {}
    for line in SYNSETS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            wnid, name, _ = line.split("\t")
            mapping[wnid] = CLASSES.index(name)
    return mapping


def load_32x32(path: Path) -> np.ndarray:
    """The whole image shrunk to 32x32 RGB with the box filter (CINIC-10's way), (32, 32, 3) uint8."""
    return np.asarray(load_rgb(path).resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


class ImageNetCIFAR10DataModule(InMemoryDataModule):
    """The ImageNet images of CIFAR-10's classes: ``val/`` is the test split (what ``src/eval.py`` reads);
    ``train/`` is read only when needed (training, BatchNorm recalibration). ``max_per_synset`` caps the images
    taken from each synset folder (the first ones, sorted by name)."""

    name = "ImageNet (CIFAR-10 classes)"
    mean, std = CIFAR10DataModule.mean, CIFAR10DataModule.std
    classes = CLASSES

    def __init__(self, root: str = "data/imagenet", train_split: str = "train", val_split: str = "val",
                 max_per_synset: int | None = None, bad_images: str = "error", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.train_split, self.val_split, self.max_per_synset = train_split, val_split, max_per_synset
        self.bad_images = check_bad_image_policy(bad_images)
        self._read: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def read(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the mapped synset folders of one split, 32x32 uint8 (N, 3, 32, 32), and its labels."""
        folder = split_dir(self.root, split, self.name, f"an ImageNet folder tree, {self.root}/{split}/<wnid>/*.JPEG "
                           f"(wnid: a WordNet ID such as n02690373)")
        mapping = synset_classes()
        synsets = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name in mapping)
        if not synsets:
            raise DataError(f"{folder} has none of the {len(mapping)} synset folders of CIFAR-10's classes (see "
                            f"{SYNSETS_FILE.name}): point data.root at an ImageNet tree with <split>/<wnid>/ folders")
        files, labels = [], []
        for wnid in synsets:
            images = list_images(folder / wnid)[:self.max_per_synset]
            files += images
            labels += [mapping[wnid]] * len(images)
        if not files:
            raise DataError(f"the {len(synsets)} synset folders of CIFAR-10's classes under {folder} hold no "
                            f"images")
        per_class = Counter(labels)
        missing = [name for i, name in enumerate(self.classes) if i not in per_class]
        log.info(f"{folder}: {len(synsets)} synsets of CIFAR-10's classes, images per class: "
                 + ", ".join(f"{name} {per_class[i]}" for i, name in enumerate(self.classes))
                 + (f" (no synset of {', '.join(missing)} here)" if missing else ""))
        arrays, labels = decode_images(files, labels, load_32x32, self.bad_images, folder)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One split's images and labels, read once."""
        if name not in self._read:
            self._read[name] = self.read(name)
        return self._read[name]

    def load(self):
        return (*self.split(self.train_split), *self.split(self.val_split))

    def setup(self, stage: str | None = None) -> None:
        """Testing reads only ``val/``; anything else reads both splits."""
        if stage == "test":
            if self.splits is None:
                self.splits = {"test": TensorDataset(*self.split(self.val_split))}
            return
        if self.splits is not None and "train" not in self.splits:  # only the test split so far
            self.splits = None
        super().setup(stage)

    def calibration_loader(self, batches: int):
        self.setup("fit")
        return super().calibration_loader(batches)
