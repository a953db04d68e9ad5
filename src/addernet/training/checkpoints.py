"""Checkpoint files: written atomically; read safely when a user passes one (to resume, evaluate, export, distil).

A checkpoint is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers of
them, which is all that the project's checkpoints hold. A file that needs arbitrary Python objects to load
is refused, since unpickling those can run code. Everything that can be wrong with a file (missing, empty,
truncated, not a PyTorch file, an int8 export, another program's checkpoint, weights of another model)
becomes a :class:`~addernet.errors.ConfigError` that names the file and what to do; the file is only read.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from addernet.errors import ConfigError, first_line
from addernet.models import create_model
from addernet.deploy.quantized import FORMAT as EXPORT_FORMAT
from addernet.training.classifier import CONFIG_KEY, INPUT_SIZE_KEY, ImageClassifier


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file beside it, then rename: a crash never leaves half a file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_checkpoint(path: str | Path, where: str | None = None) -> dict:
    """The contents of a checkpoint written by ``src/train.py``; ``where`` names it in errors (default
    ``ckpt_path=<path>``)."""
    path = Path(path).expanduser()
    where = where or f"ckpt_path={path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file (pass a .ckpt written by src/train.py, e.g. "
                          f"<run dir>/checkpoints/best.ckpt)")
    if path.stat().st_size == 0:
        raise ConfigError(f"{where}: the file is empty (an interrupted copy or write?): pass another checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # the unpickler met bytes that are no pickle: damaged
            raise ConfigError(f"{where} cannot be read as a checkpoint: the file is damaged or truncated, or not "
                              f"a PyTorch file; pass another checkpoint (best.ckpt or last.ckpt of the run)") from None
        raise ConfigError(f"{where} holds Python objects besides tensors and plain values, which are not loaded "
                          f"from a file because loading them can run code: pass a checkpoint written by "
                          f"src/train.py") from None
    except Exception as err:  # noqa: BLE001  (truncated or corrupted files raise many kinds)
        raise ConfigError(f"{where} cannot be read as a checkpoint ({type(err).__name__}: {first_line(err)}): "
                          f"the file is damaged or truncated, or not a PyTorch file; pass another checkpoint "
                          f"(best.ckpt or last.ckpt of the run)") from None
    if isinstance(checkpoint, dict) and checkpoint.get("format") == EXPORT_FORMAT:
        raise ConfigError(f"{where} is an int8 export written by src/export.py, not a training checkpoint: "
                          f"evaluate it with src/eval.py ckpt_path=<it>, classify images with src/predict.py")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{where} is not a Lightning checkpoint (it holds no state_dict): pass a .ckpt "
                          f"written by src/train.py")
    model = (checkpoint.get(CONFIG_KEY) or {}).get("model")
    if not isinstance(model, dict) or "name" not in model:
        raise ConfigError(f"{where} was not written by addernet's src/train.py: it holds no {CONFIG_KEY!r} "
                          f"entry naming its model")
    return checkpoint


def check_weights(net: nn.Module, state_dict: dict, where: str) -> None:
    """The network weights of a checkpoint (``net.*``) fit ``net`` exactly: no key missing, none unexpected,
    every shape equal; else a ConfigError naming the first differences."""
    saved = {k[len("net."):]: v for k, v in state_dict.items() if k.startswith("net.")}
    expected = net.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {tuple(saved[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape]
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                if keys]
    if problems:
        raise ConfigError(f"{where}: its weights do not fit the model ({'; '.join(problems)}): the file holds "
                          f"another model, or was edited; pass a checkpoint of this model")


def load_checkpoint_model(ckpt_path: str | Path, setting: str = "ckpt_path") -> tuple[ImageClassifier, dict]:
    """Rebuild the classifier stored in a checkpoint written by ``src/train.py`` (model from its saved config),
    its network weights loaded strictly; returns it and the run's config."""
    where = f"{setting}={ckpt_path}"
    checkpoint = read_checkpoint(ckpt_path, where)
    config = checkpoint[CONFIG_KEY]
    state = checkpoint["state_dict"]
    options = {k: v for k, v in config["model"].items() if k not in ("_target_", "name")}
    classes = state.get("net.bn_logits.weight")
    if classes is None:
        raise ConfigError(f"{where}: its weights have no classifier (net.bn_logits): the file was edited or "
                          f"holds another model; pass a checkpoint written by src/train.py")
    try:
        net = create_model(config["model"]["name"], num_classes=classes.numel(), **options)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: its model cannot be built here ({err}): it was written by another version "
                          f"of the project") from None
    check_weights(net, state, where)
    net.load_state_dict({k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})
    module = ImageClassifier(net, optimizer=None)  # metric states are not restored: evaluation starts afresh
    module.input_size = tuple(checkpoint[INPUT_SIZE_KEY]) if INPUT_SIZE_KEY in checkpoint else None
    return module, config


def check_images_fit(net: nn.Module, input_size: tuple[int, ...] | None, datamodule, where: str) -> None:
    """The data module's test images have the shape the model was trained on (``input_size``, (C, H, W)); for a
    checkpoint that does not record it, the model must at least run on them. Else one ConfigError."""
    datamodule.setup("test")
    x = next(iter(datamodule.test_dataloader()))[0][:2]
    shape = tuple(x.shape[1:])
    data = type(datamodule).__name__
    if input_size is not None and tuple(input_size) != shape:
        raise ConfigError(f"{where} holds a model trained on {_size(input_size)} images, but {data} serves "
                          f"{_size(shape)} images: use data of the kind it was trained on (its run's "
                          f".hydra/config.yaml names it)")
    x = datamodule.on_after_batch_transfer((x, None), 0)[0] if hasattr(datamodule, "normalize") else x
    try:
        with torch.no_grad():
            net.eval()(x)
    except (RuntimeError, ValueError) as err:  # convolution says RuntimeError, the adder layer ValueError
        raise ConfigError(f"{where} cannot take {data}'s images of shape {_size(shape)} ({first_line(err)}): "
                          f"use data of the kind it was trained on") from None


def _size(shape) -> str:
    channels, *rest = shape
    return f"{channels}-channel {'x'.join(map(str, rest))}"
