"""A data module for data sets that fit in memory: decoded once, served as uint8, augmented per batch.

Decoding happens once per process (in ``setup``); loaders serve uint8 tensors, and the per-batch work
(random crop with padding, horizontal flip, normalisation) runs after the batch reached its device, in
``on_after_batch_transfer``, so it costs a few tensor operations on the GPU instead of Python per image.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Iterable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from addernet.data.resumable import EpochPermutation, evaluation_order
from addernet.errors import ConfigError


def random_crop_flip(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-image random crop (zero padding) and horizontal flip of a (N, C, H, W) batch, on its device."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device)[None, :, None]
    cols = dx + torch.arange(w, device=x.device)[None, None, :]
    flip = torch.rand(n, 1, 1, device=x.device) < 0.5
    cols = torch.where(flip, 2 * dx + w - 1 - cols, cols)  # mirror within the crop window
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


class InMemoryDataModule(pl.LightningDataModule):
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __init__(self, batch_size: int = 256, num_workers: int = 0, pin_memory: bool = False,
                 val_size: int = 0, augment: bool = True, crop_padding: int = 4, seed: int = 0,
                 shuffle: bool = True):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if val_size < 0:
            raise ConfigError(f"data.val_size must be >= 0, got {val_size}")
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.val_size, self.augment, self.crop_padding, self.seed = val_size, augment, crop_padding, seed
        self.shuffle = shuffle
        self._resume: tuple[int, int] | None = None  # (epoch, batches trained) from a checkpoint, used once
        self.splits: dict[str, TensorDataset] | None = None

    classes: tuple[str, ...]  # the class names, in label order

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @abstractmethod
    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (train images, train labels, test images, test labels); images uint8 (N, C, H, W)."""

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        train_x, train_y, test_x, test_y = self.load()
        splits = {"test": TensorDataset(test_x, test_y)}
        if self.val_size:
            if self.val_size >= len(train_y):
                raise ConfigError(f"data.val_size={self.val_size} leaves no training images (train has "
                                 f"{len(train_y)})")
            order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.seed))
            val, train = order[:self.val_size], order[self.val_size:]
            splits["val"] = TensorDataset(train_x[val], train_y[val])
            splits["train"] = TensorDataset(train_x[train], train_y[train])
        else:  # validate on the test split, as the paper reports
            splits["val"], splits["train"] = splits["test"], TensorDataset(train_x, train_y)
        self.splits = splits

    def _loader(self, split: str, sampler: Iterable[int] | None = None) -> DataLoader:
        # its own generator: starting an epoch draws nothing from the global RNG, whose state checkpoints keep
        return DataLoader(self.splits[split], batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.seed))

    def _processes(self) -> tuple[int, int]:
        """(processes, this one's rank) of the training job."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        processes, rank = self._processes()
        return self._loader("train", EpochPermutation(self.splits["train"], self.seed, self._skip_for, processes,
                                                      rank, shuffle=self.shuffle))

    def state_dict(self) -> dict:
        """Where training stands in the current epoch (batches trained by each process); Lightning keeps it in
        every checkpoint."""
        if self.trainer is None or not self.trainer.training:
            return {}
        processes = self._processes()[0]
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.trainer.num_training_batches:  # saved at the end of an epoch
            return {"epoch": self.trainer.current_epoch + 1, "batches": 0, "processes": processes}
        return {"epoch": self.trainer.current_epoch, "batches": done, "processes": processes}

    def load_state_dict(self, state: dict) -> None:
        if state and state["batches"] and state.get("processes", 1) != self._processes()[0]:
            raise ConfigError(f"the checkpoint was taken in the middle of an epoch by {state.get('processes', 1)} "
                              f"training processes and this run has {self._processes()[0]}: resume with as "
                              f"many (trainer.devices, trainer.num_nodes), or from a checkpoint taken at the end "
                              f"of an epoch")
        self._resume = (state["epoch"], state["batches"]) if state else None

    def _skip_for(self, epoch: int) -> int:
        """Samples to skip when epoch ``epoch`` starts: the batches trained before an interruption, once."""
        resume, self._resume = self._resume, None
        return resume[1] * self.batch_size if resume and resume[0] == epoch else 0

    def calibration_loader(self, batches: int) -> DataLoader:
        """``batches`` batches of training images, drawn once with their own seed, served unaugmented (for
        BatchNorm recalibration; nothing is drawn from the global random state)."""
        order = torch.randperm(len(self.splits["train"]), generator=torch.Generator().manual_seed(self.seed))
        chosen = order[:batches * self.batch_size]
        return DataLoader(torch.utils.data.Subset(self.splits["train"], chosen.tolist()),
                          batch_size=self.batch_size, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", evaluation_order(len(self.splits["val"])))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", evaluation_order(len(self.splits["test"])))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255 - mean) / std

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        if x.dtype != torch.uint8:  # already prepared
            return batch
        training = self.trainer is not None and self.trainer.training
        if training and self.augment and self.crop_padding > 0:
            x = random_crop_flip(x, self.crop_padding)  # pads with black, before normalisation
        return self.normalize(x), y
