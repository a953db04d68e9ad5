"""Deployment runs: export a checkpoint as a quantised file, and classify image files with such a file.

What ``src/export.py`` and ``src/predict.py`` call; ``src/eval.py`` evaluates exported files too
(:func:`addernet.experiments.evaluation.evaluate` recognises them).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from addernet.deploy import c_export, integer, quantized
from addernet.errors import ConfigError
from addernet.nn.kernels import int8
from addernet.experiments.jobs import use_threads
from addernet.training.checkpoints import load_checkpoint_model

log = logging.getLogger(__name__)
QUANTIZATIONS = ("int8",)
FORMATS = ("pt", "c")  # one file for PyTorch, or a C project (addernet.deploy.c_export)
PROGRAM_FILE = "model.int8.pt"  # in a C project: its integer program, as a file src/eval.py reads


def checkpoint_data(config: dict, cfg: DictConfig):
    """The data module the checkpoint was trained on (``data_root=`` where its files are now)."""
    data = dict(config["data"], batch_size=int(cfg.batch_size))
    if "download" in data:
        data["download"] = False  # the training data was there; where it is not, say so rather than fetch
    if cfg.get("data_root"):
        data["root"] = str(cfg.data_root)
    datamodule = instantiate(OmegaConf.create(data))
    datamodule.setup()
    return datamodule


def _batches(datamodule, loader):
    for batch in loader:
        yield datamodule.on_after_batch_transfer(batch, 0)  # normalised, not augmented


@torch.no_grad()
def test_accuracy(model: torch.nn.Module, datamodule) -> tuple[float, int, float]:
    """(top-1 accuracy, images, seconds) on the test split."""
    correct = total = 0
    start = time.perf_counter()
    for x, y in _batches(datamodule, datamodule.test_dataloader()):
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total, total, time.perf_counter() - start


def export(cfg: DictConfig) -> dict:
    """Quantise ``cfg.ckpt_path`` and write it to ``cfg.out``: ``format=pt`` one file (default: beside the
    checkpoint, ``<stem>.int8.pt``), ``format=c`` a C project (default ``<stem>_c/``)."""
    if cfg.quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantize={cfg.quantize} is not supported; choose one of {', '.join(QUANTIZATIONS)}")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format} is not supported; choose one of {', '.join(FORMATS)}")
    use_threads(cfg)
    module, config = load_checkpoint_model(cfg.ckpt_path)
    net = module.net.eval()
    if not quantized.adder_bn_pairs(net):
        raise ConfigError(f"{cfg.ckpt_path} holds {config['model']['name']}, which has no adder layers: int8 export "
                          f"is for adder networks")
    ckpt = Path(cfg.ckpt_path).expanduser()
    out = Path(cfg.out).expanduser() if cfg.get("out") else (
        ckpt.with_suffix(".int8.pt") if cfg.format == "pt" else ckpt.with_name(f"{ckpt.stem}_c"))
    kind = "file" if cfg.format == "pt" else "directory"
    if out.exists() and (out.is_dir() if cfg.format == "pt" else out.is_file()):
        raise ConfigError(f"{out} is a {'directory' if out.is_dir() else 'file'}; format={cfg.format} writes a "
                          f"{kind}: pass out=<a {kind}>")
    if out.exists() and (out.is_file() or any(out.iterdir())) and not cfg.get("overwrite"):
        raise ConfigError(f"{out} exists: pass out=<another {kind}>, or overwrite=true to replace it"
                          + (" (the project's files are rewritten, your edits to them too)" if kind == "directory"
                             else ""))
    datamodule = checkpoint_data(config, cfg)
    images = int(cfg.calibration.images)
    loader = datamodule.calibration_loader(max(1, -(-images // int(cfg.batch_size))))
    if cfg.format == "c":
        return export_c(cfg, net, config, datamodule, loader, out)
    params = quantized.calibrate(net, (x for x, _ in _batches(datamodule, loader)), float(cfg.calibration.percentile))
    int8_net = quantized.quantize_model(net, params)
    metadata = _metadata(cfg, images)
    if cfg.get("evaluate", True):
        float_acc, n, float_s = test_accuracy(net, datamodule)
        int8_acc, _, int8_s = test_accuracy(int8_net, datamodule)
        metadata.update(float_test_acc=float_acc, int8_test_acc=int8_acc, test_images=n)
        log.info(f"test accuracy on {n} images: float {100 * float_acc:.2f}% ({n / float_s:.0f} img/s), int8 "
                 f"{100 * int8_acc:.2f}% ({n / int8_s:.0f} img/s, kernel: {int8.instruction_set()})")
    data_class = get_class(config["data"]["_target_"])
    quantized.export(int8_net, out, model_name=config["model"]["name"], num_classes=module.num_classes,
                     class_names=getattr(datamodule, "class_names", None),
                     input_size=tuple(next(iter(datamodule.test_dataloader()))[0].shape[1:]),
                     mean=getattr(datamodule, "mean", data_class.mean), std=getattr(datamodule, "std", data_class.std),
                     metadata=metadata)
    log.info(f"wrote {out}")
    return {k: v for k, v in metadata.items() if isinstance(v, (int, float))}


def _metadata(cfg: DictConfig, calibration_images: int) -> dict:
    """What an export file records of how it was made."""
    return {"checkpoint": str(cfg.ckpt_path), "calibration_images": calibration_images,
            "calibration_percentile": float(cfg.calibration.percentile), "torch": str(torch.__version__),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}


def export_c(cfg: DictConfig, net: torch.nn.Module, config: dict, datamodule, loader, out: Path) -> dict:
    """The network as an integer program, written as a C project; float and integer test accuracy side by side
    (the C program's classes are the integer program's, bit for bit)."""
    images = torch.cat([x for x, _ in loader])[:int(cfg.calibration.images)]  # uint8, as the C program reads them
    if images.dtype != torch.uint8 or not hasattr(datamodule, "mean"):
        raise ConfigError(f"format=c needs a data module that serves uint8 images with its mean and std (CIFAR, "
                          f"MNIST, synthetic, ImageNet-as-CIFAR-10); {type(datamodule).__name__} does not")
    program = integer.trace(net, tuple(images.shape[1:]))
    program.model_name = config["model"]["name"]
    integer.calibrate(program, images, datamodule.mean, datamodule.std, float(cfg.calibration.percentile))
    metrics = {}
    if cfg.get("evaluate", True):
        float_acc, n, _ = test_accuracy(net, datamodule)
        correct = sum((integer.run(program, x).argmax(1) == y).sum().item() for x, y in datamodule.test_dataloader())
        metrics.update(float_test_acc=float_acc, integer_test_acc=correct / n, test_images=n)
        log.info(f"test accuracy on {n} images: float {100 * float_acc:.2f}%, integer program (what the C program "
                 f"computes) {100 * correct / n:.2f}%")
    class_names = getattr(datamodule, "class_names", None)
    (out / PROGRAM_FILE).unlink(missing_ok=True)  # never new C sources beside an old program, if stopped midway
    sizes = c_export.write_c_project(program, out, class_names)
    metrics.update(sizes)
    # the same program for PyTorch: src/eval.py and src/predict.py read it, with the C program's logits
    integer.save(program, out / PROGRAM_FILE, class_names=class_names, mean=list(datamodule.mean),
                 std=list(datamodule.std), metadata={**_metadata(cfg, len(images)), **metrics})
    log.info(f"wrote the C project {out}: weights {sizes['weight_bytes']} bytes, activation arena "
             f"{sizes['arena_bytes']} bytes; build it with make -C {out} (TARGET=cortex-m4 for a Cortex-M4F); "
             f"{out / PROGRAM_FILE} is the same program for src/eval.py and src/predict.py")
    return metrics


@torch.no_grad()
def predict(model_file: str, image_files: list[str], top: int = 1
            ) -> tuple[list[tuple[str, list[tuple[str, float]]]], list[str]]:
    """Classes (and probabilities) of image files by an exported model, and notes on how the images were
    converted to its input as torchvision's transforms would: to its channels (grayscale or RGB), then resized
    to its size (bilinear, aspect ratio not kept)."""
    from PIL import Image

    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    model = quantized.load_exported(model_file)
    channels, height, width = model.info["input_size"]
    if channels not in (1, 3):
        raise ConfigError(f"{model_file} takes {channels}-channel images; predict reads 1-channel (grayscale) "
                          f"or 3-channel (RGB) files only: evaluate it with src/eval.py on its data instead")
    mode = "L" if channels == 1 else "RGB"
    names = model.info.get("class_names") or [str(i) for i in range(model.num_classes)]
    results, converted, resized = [], 0, 0
    for file in image_files:
        try:
            with Image.open(file) as opened:
                image = opened.convert(mode)  # any mode (palette, RGBA, 16-bit, CMYK) to the model's
                converted += opened.mode != mode
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ConfigError(f"cannot read image {file} ({err}): pass image files (PNG, JPEG, ...)") from None
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
            resized += 1
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(height, width, channels)
        probs = model(model.normalize(pixels.permute(2, 0, 1)[None])).softmax(1)[0]
        best = probs.topk(min(top, len(probs)))
        results.append((file, [(names[i], p) for p, i in zip(best.values.tolist(), best.indices.tolist())]))
    kind = "grayscale" if channels == 1 else "RGB"
    notes = [f"{count} of {len(image_files)} images {what} (the model's input: {channels}x{height}x{width})"
             for count, what in ((converted, f"converted to {kind}"), (resized, f"resized to {width}x{height}"))
             if count]
    return results, notes
