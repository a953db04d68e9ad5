import numpy as np
import pytest
import torch
from PIL import Image

from addernet.data import DataError, ImageNetCIFAR10DataModule
from addernet.data.cifar10 import CLASSES, CIFAR10DataModule
from addernet.data.imagenet_cifar10 import synset_classes
from data_files import write_image_folders

# synsets of CINIC-10's mapping (airliner, beach wagon, tabby cat, bullfrog), one that is not in it (tench) and
# one it lists under two classes (minivan: automobile and truck), left out
MAPPED = {"n02690373": "airplane", "n02814533": "automobile", "n02123045": "cat", "n01641577": "frog"}
UNMAPPED = ("n01440764", "n03770679")


@pytest.fixture
def tree(tmp_path):
    write_image_folders(tmp_path, {"train": 3, "val": 2}, classes=(*MAPPED, *UNMAPPED), size=(50, 37), ext=".JPEG")
    return tmp_path


def module(root, **kwargs):
    return ImageNetCIFAR10DataModule(root=str(root), batch_size=4, **kwargs)


def test_the_mapping_is_cinic10s():
    mapping = synset_classes()
    assert len(mapping) == 1358 and set(mapping.values()) == set(range(10))
    assert all(mapping[w] == CLASSES.index(c) for w, c in MAPPED.items())
    assert not set(UNMAPPED) & set(mapping)


def test_val_is_the_test_split_shrunk_whole_to_32x32_with_cifar10_labels(tree):
    dm = module(tree)
    dm.setup("test")
    assert set(dm.splits) == {"test"}  # testing reads val/ only
    x, y = dm.splits["test"].tensors
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8
    expected_labels = [CLASSES.index(MAPPED[w]) for w in sorted(MAPPED) for _ in range(2)]
    assert y.tolist() == expected_labels
    first = sorted((tree / "val" / sorted(MAPPED)[0]).iterdir())[0]  # box filter over the whole image
    box = np.array(Image.open(first).convert("RGB").resize((32, 32), Image.Resampling.BOX))
    assert torch.equal(x[0], torch.from_numpy(box).permute(2, 0, 1))
    assert dm.num_classes == 10 and dm.class_names == list(CLASSES)
    images, labels = next(iter(dm.test_dataloader()))
    served = dm.on_after_batch_transfer((images, labels), 0)[0]
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in (CIFAR10DataModule.mean, CIFAR10DataModule.std))
    assert torch.allclose(served, (images / 255 - mean) / std)  # CIFAR-10's statistics: what the model expects


def test_training_and_recalibration_read_train_and_keep_the_test_split(tree):
    dm = module(tree, max_per_synset=2)
    dm.setup("test")
    test = dm.splits["test"]
    loader = dm.calibration_loader(1)
    assert len(dm.splits["train"]) == 8 and dm.splits["test"].tensors[0].data_ptr() == test.tensors[0].data_ptr()
    assert next(iter(loader))[0].shape == (4, 3, 32, 32)


def test_errors_say_what_was_expected(tree, tmp_path_factory):
    with pytest.raises(DataError, match="Expected an ImageNet folder tree, .*/val/<wnid>/"):
        module(tmp_path_factory.mktemp("empty")).setup("test")
    other = tmp_path_factory.mktemp("other")
    write_image_folders(other, {"val": 1}, classes=UNMAPPED, ext=".JPEG")
    with pytest.raises(DataError, match="has none of the 1358 synset folders of CIFAR-10's classes"):
        module(other).setup("test")
    (sorted((tree / "val" / "n02690373").iterdir())[0]).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot read image .*data.bad_images=skip"):
        module(tree).setup("test")
    with pytest.warns(UserWarning, match="skipped 1 unreadable images"):
        dm = module(tree, bad_images="skip")
        dm.setup("test")
    assert len(dm.splits["test"]) == 7
