"""W&B for runs on machines with or without a route to its server."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the W&B server (``WANDB_BASE_URL``, default api.wandb.ai) accepts a connection within ``timeout``."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def prepare_wandb(run_dir: Path) -> None:
    """W&B writes offline when it cannot upload: with no API key, or with one but no route to the server (a
    cluster node without internet would otherwise stall for minutes and fail). One line says how to upload."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return
    has_key = os.environ.get("WANDB_API_KEY") or "api.wandb.ai" in _read(Path.home() / ".netrc")
    if has_key and wandb_reachable():
        return
    why = "no W&B API key (WANDB_API_KEY or wandb login)" if not has_key else "the W&B server cannot be reached"
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")  # its own hint ("run wandb online") does not fit here
    log.warning(f"W&B logs offline ({why}); upload later with: wandb sync {run_dir}/wandb/offline-run-*")


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def finish_wandb(trainer: pl.Trainer) -> None:
    """Close this job's W&B run, so that the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()
