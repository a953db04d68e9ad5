import torch

from addernet.data import SyntheticDataModule


def data(seed=0, **kw):
    dm = SyntheticDataModule(num_classes=5, image_size=12, channels=2, train_size=200, test_size=50, seed=seed, **kw)
    dm.setup()
    return dm


def test_same_seed_same_images_and_other_seed_other_images():
    a, b, c = data(0), data(0), data(1)
    assert torch.equal(a.splits["train"].tensors[0], b.splits["train"].tensors[0])
    assert not torch.equal(a.splits["train"].tensors[0], c.splits["train"].tensors[0])
    assert a.splits["train"].tensors[0].shape == (200, 2, 12, 12) and a.num_classes == 5


def test_classes_are_separable_by_their_mean_image():
    dm = data(noise=0.1)
    x, y = (t for t in dm.splits["train"].tensors)
    means = torch.stack([x[y == c].float().mean(0) for c in range(5)])
    tx, ty = dm.splits["test"].tensors
    nearest = ((tx.float()[:, None] - means[None]) ** 2).flatten(2).sum(-1).argmin(1)
    assert (nearest == ty).float().mean() > 0.8  # learnable: a nearest-mean classifier already does well
