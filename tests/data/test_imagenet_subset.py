import pytest
import torch

from addernet.data import DataError, ImageNetSubsetDataModule
from data_files import write_image_folders

WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")


@pytest.fixture
def tree(tmp_path):
    write_image_folders(tmp_path, {"train": 4, "val": 2}, classes=WNIDS, size=(40, 30), ext=".JPEG")
    return tmp_path


def test_first_classes_capped_and_served_at_image_size(tree):
    dm = ImageNetSubsetDataModule(root=str(tree), num_classes=3, max_per_class=2, image_size=32, batch_size=4,
                                  num_workers=0, pin_memory=False)
    dm.setup()
    assert dm.classes == list(WNIDS[:3]) and dm.num_classes == 3
    assert len(dm.datasets["train"]) == 6 and len(dm.datasets["val"]) == 6
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)


def test_explicit_classes(tree):
    dm = ImageNetSubsetDataModule(root=str(tree), classes=[WNIDS[4], WNIDS[1]], num_workers=0)
    assert dm.classes == [WNIDS[4], WNIDS[1]] and dm.num_classes == 2
    with pytest.raises(DataError, match="lacks: \\['n00000000'\\]"):
        _ = ImageNetSubsetDataModule(root=str(tree), classes=["n00000000"]).classes


def test_errors_say_what_was_expected(tree, tmp_path_factory):
    with pytest.raises(DataError, match="has only 5 class folders: .*data.num_classes=null to take them all"):
        _ = ImageNetSubsetDataModule(root=str(tree), num_classes=10).classes
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DataError, match="Expected .*/train/<class>/"):
        _ = ImageNetSubsetDataModule(root=str(empty)).classes
    for f in (tree / "val" / WNIDS[0]).iterdir():
        f.unlink()
    with pytest.raises(DataError, match=f"class '{WNIDS[0]}' has no images"):
        ImageNetSubsetDataModule(root=str(tree), num_classes=2, num_workers=0).setup()
