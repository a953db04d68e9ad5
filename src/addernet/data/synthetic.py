"""A deterministic, learnable image data set made in memory: no files, no network.

Each class has a smooth random prototype image; a sample is its class prototype with a random brightness
and contrast change plus pixel noise. Same seed, same images, on any machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from addernet.data.in_memory import InMemoryDataModule


def make_images(num: int, prototypes: torch.Tensor, noise: float, gen: torch.Generator):
    labels = torch.randint(0, len(prototypes), (num,), generator=gen)
    contrast = 0.6 + 0.8 * torch.rand(num, 1, 1, 1, generator=gen)
    brightness = 0.2 * torch.randn(num, 1, 1, 1, generator=gen)
    pixels = 0.5 + contrast * (prototypes[labels] - 0.5) + brightness
    pixels = pixels + noise * torch.randn(pixels.shape, generator=gen)
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8), labels


class SyntheticDataModule(InMemoryDataModule):
    def __init__(self, num_classes: int = 10, image_size: int = 32, channels: int = 3, train_size: int = 5000,
                 test_size: int = 1000, noise: float = 0.2, seed: int = 0, crop_padding: int | None = None,
                 **kwargs):
        # crop_padding None: an eighth of the image, as CIFAR's 4 pixels of 32
        padding = max(1, image_size // 8) if crop_padding is None else crop_padding
        super().__init__(seed=seed, crop_padding=padding, **kwargs)
        if num_classes < 2 or image_size < 4 or channels < 1 or train_size < 1 or test_size < 1:
            raise ValueError("synthetic data needs num_classes >= 2, image_size >= 4, channels >= 1 and "
                             "positive train_size and test_size")
        self._num_classes, self.image_size, self.channels = num_classes, image_size, channels
        self.train_size, self.test_size, self.noise = train_size, test_size, noise
        self.mean = self.std = (0.5,) * channels

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(self._num_classes))

    def load(self):
        gen = torch.Generator().manual_seed(self.seed)
        coarse = torch.rand(self._num_classes, self.channels, 4, 4, generator=gen)
        prototypes = F.interpolate(coarse, size=self.image_size, mode="bilinear", align_corners=False)
        return (*make_images(self.train_size, prototypes, self.noise, gen),
                *make_images(self.test_size, prototypes, self.noise, gen))
