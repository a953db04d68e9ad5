"""Reading image files: one place for the extensions we accept and how files become RGB pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from addernet.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
BAD_IMAGE_POLICIES = ("error", "skip")


def check_bad_image_policy(policy: str) -> str:
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"data.bad_images must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
    return policy


def split_dir(root: Path, split: str, what: str, expected: str) -> Path:
    """``root/split``, or a DataError saying what is there instead and what was ``expected``."""
    path = root / split
    if not path.is_dir():
        problem = f"data.root={root} is a file, not a directory" if root.is_file() else f"{path} is not a directory"
        raise DataError(f"{what}: {problem}. Expected {expected}; set data.root=<dir>.")
    return path


def list_class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (grayscale, palette and RGBA are converted); unreadable files raise DataError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}. Remove or replace the file, or set "
                        f"data.bad_images=skip to leave unreadable images out.") from err


def load_rgb_array(path: Path) -> np.ndarray:
    return np.asarray(load_rgb(path), dtype=np.uint8)


def load_gray_array(path: Path) -> np.ndarray:
    """An image as one grayscale channel, (H, W, 1) uint8; unreadable files raise DataError."""
    return np.asarray(load_rgb(path).convert("L"), dtype=np.uint8)[:, :, None]
