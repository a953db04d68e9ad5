"""Tracking what the AdderNet paper looks at, to W&B (when it is a logger) and to files in the run directory.

- every ``log_every_n_steps`` steps, per adder layer: the raw gradient norm, the factor AdaLR applied
  (alpha_l; 1 with AdaLR off) and the weight norm;
- every epoch: training throughput (img/s over the training steps alone), training and evaluation time
  apart, peak GPU memory; histograms of adder and of conv weights at the
  start and end of the epoch (the paper's figure: adder weights Laplacian-like, conv weights Gaussian-like),
  also appended to ``weight_histograms.jsonl``;
- once: parameters, multiplications, additions and energy per image, device and software versions
  (``model_stats.json``); after testing, a 2-D PCA of the test set's penultimate features coloured by class
  (``features_pca.png``: the paper's figure 1 argument, adder features cluster by angle less than CNN ones).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from addernet.nn.layer import Adder2d
from addernet.models import count_ops
from addernet.system import device_name

HISTOGRAMS_FILE = "weight_histograms.jsonl"
STATS_FILE = "model_stats.json"
FEATURES_PLOT = "features_pca.png"


def weights_by_kind(model: nn.Module) -> dict[str, torch.Tensor]:
    """All adder weights and all conv weights of a model, each flattened into one vector."""
    kinds: dict[str, list[torch.Tensor]] = {"adder": [], "conv": []}
    for m in model.modules():
        if isinstance(m, Adder2d):
            kinds["adder"].append(m.weight.detach().flatten())
        elif isinstance(m, nn.Conv2d):
            kinds["conv"].append(m.weight.detach().flatten())
    return {k: torch.cat(v).float().cpu() for k, v in kinds.items() if v}


def histogram(values: torch.Tensor, bins: int) -> dict:
    lo, hi = values.min().item(), values.max().item()
    counts = torch.histc(values, bins=bins, min=lo, max=hi if hi > lo else lo + 1)
    edges = torch.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    return {"counts": counts.int().tolist(), "edges": edges.tolist()}


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    centred = features - features.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def feature_sample(size: int, samples: int) -> torch.Tensor:
    """Indices of a seeded sample of ``samples`` of ``size`` test images, spread over the whole test set (test
    data is often stored class by class, so its first images would be a few classes)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:samples]


class AdderTracker(pl.Callback):
    def __init__(self, log_every_n_steps: int = 50, histogram_bins: int = 64, feature_samples: int = 2000):
        self.every, self.bins, self.feature_samples = log_every_n_steps, histogram_bins, feature_samples
        self._train_seconds = self._val_seconds = self._mark = self._val_start = 0.0
        self._images = 0
        self._stats_logged = False
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._hook = None
        self._resumed: tuple[float, float, int] = (0.0, 0.0, 0)  # (train s, val s, images) before a resume
        self._batch_features: torch.Tensor | None = None

    # ---- once -------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._stats_logged:
            self._stats_logged = True
            self._log_model_stats(trainer, pl_module, tuple(batch[0].shape[1:]))

    @rank_zero_only
    def _log_model_stats(self, trainer, pl_module, input_size) -> None:
        ops = count_ops(pl_module.net, input_size)
        stats = {
            "parameters": sum(p.numel() for p in pl_module.net.parameters()),
            "multiplications_per_image": ops.multiplications, "additions_per_image": ops.additions,
            "energy_uj_per_image": ops.energy_pj / 1e6, "input_size": list(input_size),
            "device": device_name(pl_module.device),
            "python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
        }
        for logger in trainer.loggers:
            logger.log_hyperparams({"model_stats": stats})
        _write(trainer, STATS_FILE, json.dumps(stats, indent=2))

    # ---- every N steps ----------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        adders = {n: m for n, m in pl_module.net.named_modules() if isinstance(m, Adder2d)}
        stats = pl_module.last_adalr
        if stats is not None:
            norms = dict(zip(stats.names, stats.grad_norms.tolist()))
            alphas = dict(zip(stats.names, stats.alphas.tolist()))
        else:  # AdaLR off: the gradients here are the raw ones
            norms = {n: m.weight.grad.norm().item() for n, m in adders.items() if m.weight.grad is not None}
            alphas = {n: 1.0 for n in norms}
        metrics = {}
        for name in norms:
            metrics[f"adder/{name}/grad_norm"] = norms[name]
            metrics[f"adder/{name}/alpha"] = alphas[name]
            metrics[f"adder/{name}/weight_norm"] = adders[name].weight.detach().norm().item()
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    # ---- every epoch ------------------------------------------------------------------------------------
    # Time is split in two: training steps (data loading, forward, backward, update, the callbacks of each
    # step), from the epoch's start to its last training batch, and evaluation (validation with BatchNorm
    # recalibration), which Lightning runs inside the training epoch, before on_train_epoch_end.
    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start: go on from the times and images saved with it
        self._train_seconds, self._val_seconds, self._images = self._resumed
        self._mark = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._train_seconds, self._val_seconds, self._images = 0.0, 0.0, 0
        self._mark = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._log_histograms(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._train_seconds += now - self._mark
        self._mark = now
        self._images += batch[0].shape[0]
        if self._train_seconds > 0:  # the progress bar's it/s counts batches; this counts images
            pl_module.log("img/s", self._images * trainer.world_size / self._train_seconds, prog_bar=True,
                          logger=False, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not a validation run of its own
            return
        self._mark = time.perf_counter()
        self._val_seconds += self._mark - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {"perf/train_seconds": self._train_seconds, "perf/val_seconds": self._val_seconds,
                   "perf/epoch_seconds": self._train_seconds + self._val_seconds}
        if self._train_seconds > 0:
            metrics["perf/train_img_per_s"] = self._images * trainer.world_size / self._train_seconds
        if torch.cuda.is_available():
            metrics["perf/peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)
        self._log_histograms(trainer, pl_module, "end")

    def state_dict(self) -> dict:
        """The current epoch's times and images so far: a run resumed mid-epoch reports the whole epoch."""
        return {"train_seconds": self._train_seconds + time.perf_counter() - self._mark,
                "val_seconds": self._val_seconds, "epoch_images": self._images}

    def load_state_dict(self, state: dict) -> None:
        self._resumed = (state.get("train_seconds", 0.0), state.get("val_seconds", 0.0), state.get("epoch_images", 0))

    @rank_zero_only
    def _log_histograms(self, trainer, pl_module, when: str) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        for kind, values in weights_by_kind(pl_module.net).items():
            hist = histogram(values, self.bins)
            record = {"epoch": trainer.current_epoch, "when": when, "kind": kind, **hist}
            _write(trainer, HISTOGRAMS_FILE, json.dumps(record) + "\n", append=True)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    import wandb
                    logger.experiment.log({f"weights/{kind}": wandb.Histogram(
                        np_histogram=(hist["counts"], hist["edges"])), "trainer/global_step": trainer.global_step})

    # ---- after testing ----------------------------------------------------------------------------------
    def on_test_start(self, trainer, pl_module) -> None:
        self._features, self._labels, self._batch_features = [], [], None

        def keep_first(module, args):  # the test step's forward, not extra ones other callbacks make
            if self._batch_features is None:
                self._batch_features = args[0].flatten(1).float().cpu()
        # the classifier's input is the penultimate features (see addernet.models.interface)
        self._hook = pl_module.net.get_classifier().register_forward_pre_hook(keep_first)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch_features = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._batch_features is not None:
            self._features.append(self._batch_features)
            self._labels.append(batch[1].cpu())

    def on_test_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
        if trainer.is_global_zero and self._features:
            self._plot_features(trainer, pl_module)

    def _plot_features(self, trainer, pl_module) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keep = feature_sample(sum(len(y) for y in self._labels), self.feature_samples)
        points, labels = pca_2d(torch.cat(self._features)[keep]), torch.cat(self._labels)[keep]
        names = getattr(trainer.datamodule, "class_names", None) if trainer.datamodule is not None else None
        fig, ax = plt.subplots(figsize=(6, 6))
        cmap = plt.get_cmap("tab10" if pl_module.num_classes <= 10 else "tab20")
        for c in labels.unique().tolist():
            at = labels == c
            ax.scatter(points[at, 0], points[at, 1], s=4, color=cmap(c % cmap.N),
                       label=names[c] if names else str(c))
        if pl_module.num_classes <= 20:
            ax.legend(title="class", fontsize=7, loc="best", markerscale=2)
        name = pl_module.run_config.get("model", {}).get("name", "model") if pl_module.run_config else "model"
        ax.set(title=f"{name}: penultimate features of {len(labels)} test images (PCA)", xlabel="PC 1",
               ylabel="PC 2")
        path = Path(trainer.default_root_dir) / FEATURES_PLOT
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("features/pca", [str(path)])


def _write(trainer, name: str, text: str, append: bool = False) -> None:
    path = Path(trainer.default_root_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w") as f:
        f.write(text)
