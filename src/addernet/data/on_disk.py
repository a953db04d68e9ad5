"""Data sets that live as files under ``data.root``: a native layout (downloaded when missing) or class folders.

A subclass names its classes and image shape, how to recognise, fetch and read its native layout; this class
detects the layout, downloads when asked (removing what a failed download created), reads class folders
(``train/<class>/*``, ``test/<class>/*``), and words the errors.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from addernet.data.errors import DataError
from addernet.data.images import (check_bad_image_policy, list_class_folders, list_images, load_gray_array,
                                  load_rgb_array)
from addernet.data.in_memory import InMemoryDataModule

log = logging.getLogger(__name__)


def first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None if ``path`` exists)."""
    path = path.absolute()
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def decode_images(files: list[Path], labels: list[int], decode: Callable[[Path], np.ndarray], bad_images: str,
                  where: Path) -> tuple[list[np.ndarray], list[int]]:
    """Decode image files in a few threads; with ``bad_images="skip"`` unreadable ones are left out (with their
    labels) and counted in one warning."""
    def decode_or_none(path: Path) -> np.ndarray | None:
        try:
            return decode(path)
        except DataError:
            return None

    log.info(f"decoding {len(files)} images under {where} into memory (once per run)")
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes with the GIL released
        arrays = list(pool.map(decode if bad_images == "error" else decode_or_none, files))
    bad = [f for f, a in zip(files, arrays) if a is None]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable images under {where} (data.bad_images=skip): "
                      f"{', '.join(str(f) for f in bad[:5])}{' ...' if len(bad) > 5 else ''}")
        labels = [label for label, a in zip(labels, arrays) if a is not None]
        arrays = [a for a in arrays if a is not None]
    return arrays, labels


def read_class_folders(split_dir: Path, classes: list[str], bad_images: str,
                       shape: tuple[int, int, int], what: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``split_dir/<class>/`` for the given classes, decoded into (N, C, H, W) uint8 and labels;
    ``shape`` (H, W, C) is what each image must be (C = 1: read as grayscale)."""
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
    decode = load_gray_array if shape[2] == 1 else load_rgb_array
    arrays, labels = decode_images(files, labels, decode, bad_images, split_dir)
    shapes = {a.shape for a in arrays}
    if shapes != {shape}:
        raise DataError(f"{what} images must be {shape[0]}x{shape[1]}, found shapes {sorted(shapes)} under "
                        f"{split_dir}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


class OnDiskDataModule(InMemoryDataModule):
    name: str
    image_shape: tuple[int, int, int]  # (H, W, C)

    def __init__(self, root: str = "data", download: bool = True, bad_images: str = "error", **kwargs):
        super().__init__(**kwargs)
        self.root, self.download = Path(root).expanduser(), download
        self.bad_images = check_bad_image_policy(bad_images)

    # what a subclass provides
    def expected(self) -> str:
        """The layouts looked for, in words, for error messages."""
        raise NotImplementedError

    def native_layout(self) -> bool:
        raise NotImplementedError

    def fetch(self) -> None:
        """Download into ``self.root`` in the native layout."""
        raise NotImplementedError

    def load_native(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # the common part
    def find_layout(self) -> str | None:
        """``"native"``, ``"folders"`` (train/<class>/, test/<class>/) or None."""
        if self.native_layout():
            return "native"
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            return "folders"
        return None

    def _missing(self, why: str) -> DataError:
        return DataError(
            f"{self.name} not found under {self.root.resolve()}: {why}. Expected {self.expected()}. Set "
            f"data.root=<dir> (or DATA_DIR in .env)" + (", or check the network connection (or download it "
                                                         "elsewhere)." if self.download else
                                                         ", or data.download=true to fetch it."))

    def prepare_data(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"data.root={self.root} is a file, not a directory: point data.root at a folder")
        if self.find_layout() is not None:
            return
        if not self.download:
            raise self._missing("no known layout there and data.download=false")
        created = first_missing(self.root)  # what the download creates, and removes again if it fails
        try:
            self.fetch()
        except Exception as err:  # network errors come in many types
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise self._missing(f"the download failed ({err!r})") from err

    def load(self):
        layout = self.find_layout()
        if layout is None:  # setup() without prepare_data(), as in eval
            self.prepare_data()
            layout = self.find_layout()
        if layout == "native":
            return self.load_native()
        classes = list(self.classes)
        return (*read_class_folders(self.root / "train", classes, self.bad_images, self.image_shape, self.name),
                *read_class_folders(self.root / "test", classes, self.bad_images, self.image_shape, self.name))
