"""Small data sets written in the real on-disk formats, for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from addernet.data.cifar10 import CLASSES, PICKLE_DIR, TEST_BATCHES, TRAIN_BATCHES


def write_cifar_pickles(root: Path, per_batch: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's CIFAR-10 python layout: pickled dicts with b"data" (N, 3072) uint8 and b"labels"."""
    rng = np.random.default_rng(seed)
    folder = root / PICKLE_DIR
    folder.mkdir(parents=True)
    written = {}
    for name in TRAIN_BATCHES + TEST_BATCHES:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES]}, f, protocol=2)
    return written


def write_image_folders(root: Path, splits: dict[str, int], classes=CLASSES, size=(32, 32), ext=".png",
                        seed: int = 0) -> None:
    """``root/<split>/<class>/<i><ext>``; every third image grayscale, every fifth a palette image, every
    seventh RGBA (not for JPEG, which has no alpha)."""
    rng = np.random.default_rng(seed)
    for split, per_class in splits.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if i % 3 == 2:
                    image = image.convert("L")
                elif i % 5 == 4:
                    image = image.convert("P")
                elif i % 7 == 6 and ext.lower() == ".png":
                    image = image.convert("RGBA")
                image.save(folder / f"{i:04d}{ext}")


def write_mnist_idx(folder: Path, split: str, count: int, gz: bool = True, seed: int = 0) -> tuple:
    """torchvision's MNIST raw files: big-endian IDX headers, then uint8 pixels (N x 28 x 28) and labels."""
    import gzip

    from addernet.data.mnist import FILES, IMAGE_MAGIC, LABEL_MAGIC

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = FILES[split]
    for name, header, body in ((images_name, [IMAGE_MAGIC, count, 28, 28], pixels),
                               (labels_name, [LABEL_MAGIC, count], labels)):
        data = np.array(header, dtype=">i4").tobytes() + body.tobytes()
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / name).write_bytes(data)
    return pixels, labels
