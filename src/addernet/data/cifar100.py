"""CIFAR-100 from either on-disk layout: torchvision's pickles or a class-per-folder image tree.

The 100 (fine) class names come from the data: the pickles' ``meta`` file, or the folder names.
"""

from __future__ import annotations

from addernet.data.cifar10 import read_pickle_batches
from addernet.data.images import list_class_folders
from addernet.data.on_disk import OnDiskDataModule

PICKLE_DIR = "cifar-100-python"
NUM_CLASSES = 100


class CIFAR100DataModule(OnDiskDataModule):
    """CIFAR-100 under ``root``, in torchvision's layout (downloaded if missing and ``download``) or as
    ``train/<class>/*`` and ``test/<class>/*`` image folders; the layout is detected."""

    name = "CIFAR-100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    image_shape = (32, 32, 3)

    @property
    def classes(self) -> tuple[str, ...]:
        layout = self.find_layout()
        if layout == "native":
            import pickle

            with open(self.root / PICKLE_DIR / "meta", "rb") as f:
                return tuple(n.decode() for n in pickle.load(f, encoding="bytes")[b"fine_label_names"])
        if layout == "folders":
            return tuple(list_class_folders(self.root / "train"))
        return tuple(str(i) for i in range(NUM_CLASSES))  # before the download: the count is known, the names not

    def expected(self) -> str:
        return (f"either torchvision's layout ({self.root}/{PICKLE_DIR}/train, test, meta) or image folders "
                f"({self.root}/train/<class>/*.png|jpg and {self.root}/test/<class>/...)")

    def native_layout(self) -> bool:
        return (self.root / PICKLE_DIR / "train").is_file()

    def fetch(self) -> None:
        from torchvision.datasets import CIFAR100

        for train in (True, False):
            CIFAR100(str(self.root), train=train, download=True)

    def load_native(self):
        folder = self.root / PICKLE_DIR
        return (*read_pickle_batches(folder, ("train",), label_key=b"fine_labels"),
                *read_pickle_batches(folder, ("test",), label_key=b"fine_labels"))
