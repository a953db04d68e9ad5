"""Schemas for the Hydra configs, so that every key of a composed config is checked when Hydra composes it: a
misspelt key or a value of the wrong type is an error before anything runs.

The project's own settings (the top level of ``train.yaml``, ``eval.yaml``, ``export.yaml`` and the model group)
are written out as dataclasses. The groups that configure a class or function (data modules, the trainer, the
optimizer, schedules, AdaLR) get a schema made from its signature: one field per parameter, typed as annotated
where OmegaConf can check the type, so the signature stays the one place that says what a setting is. A group's
YAML file names its schema first in its defaults list, e.g. ``- /schema/data/cifar10@_here_``.

``callbacks``, ``logger``, ``paths`` and the ``hydra`` node stay free-form.
"""

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, List, Optional

import lightning.pytorch as pl
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from addernet import data
from addernet.errors import ConfigError
from addernet.training import adalr, schedules

CONFIG_PRIMITIVES = (bool, int, float, str)


def config_type(annotation: Any) -> Any:
    """The type OmegaConf checks a setting against: ``annotation`` where OmegaConf can check it (``int``,
    ``Optional[float]``, ``List[str]``...), else ``Any``. A tensor cannot be written in a config, so
    ``float | Tensor`` is checked as ``float``; ``int | float`` means different things for each (Lightning's
    ``limit_train_batches``: a count or a fraction), so it stays ``Any``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)
                   and not (isinstance(a, type) and issubclass(a, torch.Tensor))]
        if len(members) != 1:
            return Any
        inner = config_type(members[0])
        return Optional[inner] if inner is not Any and type(None) in args else inner
    if annotation in CONFIG_PRIMITIVES:
        return annotation
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        item = args[0]
        return List[item] if item in CONFIG_PRIMITIVES else List[Any]
    return Any


def signature_parameters(target: Callable) -> list[inspect.Parameter]:
    """The keyword parameters of ``target`` (a class's ``__init__``, following ``**kwargs`` up its bases) with
    their annotations resolved."""
    functions = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if isinstance(target, type) \
        else [target]
    found: dict[str, inspect.Parameter] = {}
    for function in functions:
        hints = typing.get_type_hints(function)
        params = list(inspect.signature(function).parameters.values())
        for p in params:
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in found:
                found[p.name] = p.replace(annotation=hints.get(p.name, Any))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(found.values())


def signature_schema(target: Callable, exclude: Sequence[str] = (), partial: bool = False) -> type:
    """A dataclass with ``_target_`` and one field per parameter of ``target`` except ``exclude`` (the ones the
    code passes itself); a parameter without a default is required (``???``)."""
    fields: list[tuple] = [("_target_", str, field(default=f"{target.__module__}.{target.__qualname__}"))]
    if partial:
        fields.append(("_partial_", bool, field(default=True)))
    for p in signature_parameters(target):
        if p.name in exclude:
            continue
        kind, default = config_type(p.annotation), p.default
        if default is inspect.Parameter.empty:
            fields.append((p.name, kind, field(default=MISSING)))
            continue
        if default is None and kind is not Any and typing.get_origin(kind) is not typing.Union:
            kind = Optional[kind]
        if isinstance(default, (list, tuple)):
            fields.append((p.name, kind, field(default_factory=lambda d=default: list(d))))
        elif default is None or isinstance(default, CONFIG_PRIMITIVES):
            fields.append((p.name, kind, field(default=default)))
        # a default a config cannot hold (an object): the setting is left to the code
    return dataclasses.make_dataclass(f"{target.__name__}Config", fields)


@dataclass
class ModelConfig:
    _target_: str = "addernet.models.create_model"
    name: str = MISSING  # a registered model (addernet.models.list_models())
    init: str = "kaiming"  # kaiming (convolutions Kaiming-normal) or pytorch (PyTorch's default)
    in_channels: Optional[int] = None  # image channels; None: the model's own (1 for LeNet, 3 for the others)


@dataclass
class AdderModelConfig(ModelConfig):
    weight_grad: str = "full"  # full (the paper) or sign (the true derivative)
    backend: Optional[str] = None  # the adder layers' kernels; None: adder_backend= decides


@dataclass
class DistillConfig:
    teacher_ckpt: Optional[str] = MISSING  # the choice of the distill group sets it (null, or required)
    temperature: float = 4.0
    weight: float = 0.5


@dataclass
class TrainConfig:
    model: Any = MISSING
    data: Any = MISSING
    trainer: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    adalr: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    paths: Any = MISSING
    task_name: str = "train"
    run_name: str = ""
    sweep_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    seed: int = 42
    threads: Any = "auto"  # auto or a number of threads
    recalibrate_bn: int = 0
    adder_backend: str = "auto"
    ckpt_path: Optional[str] = None
    nonfinite: str = "stop"
    test_after_fit: bool = True
    distill: Any = MISSING
    print_config: bool = False
    next_step: Optional[str] = None


@dataclass
class EvalConfig:
    data: Any = MISSING
    trainer: Any = MISSING
    paths: Any = MISSING
    task_name: str = "eval"
    seed: int = 42
    ckpt_path: str = MISSING
    threads: Any = "auto"
    recalibrate_bn: int = 0


@dataclass
class CalibrationConfig:
    images: int = 512
    percentile: float = 99.99


@dataclass
class ExportConfig:
    paths: Any = MISSING
    task_name: str = "export"
    seed: int = 42
    ckpt_path: str = MISSING
    quantize: str = "int8"
    format: str = "pt"
    out: Optional[str] = None
    overwrite: bool = False
    data_root: Optional[str] = None
    batch_size: int = 128
    threads: Any = "auto"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluate: bool = True


def check_keys(cfg: DictConfig, path: str = "") -> None:
    """Refuse a required setting left unset (``???``), and a key added with ``+key=value`` to a node that has a
    schema: Hydra lets ``+`` add any key, and the class it configures would only fail deep inside with an
    unexpected keyword argument."""
    if not path:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{missing[0]} is required: add {missing[0]}=... to the command")
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        allowed = {f.name for f in dataclasses.fields(schema)}
        extra = [k for k in cfg.keys() if k not in allowed]
        if extra:
            where = f"{path}.{extra[0]}" if path else str(extra[0])
            raise ConfigError(f"{where} is not a setting of {schema.__name__}: remove +{where}=... "
                              f"(`--cfg job` prints every setting)")
    for key in cfg.keys():
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            check_keys(node, f"{path}.{key}" if path else str(key))


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore, where the YAML files' defaults lists find them."""
    store = ConfigStore.instance()
    for name, node in {"train": TrainConfig, "eval": EvalConfig, "export": ExportConfig}.items():
        store.store(group="schema", name=name, node=node)
    store.store(group="schema", name="distill", node=DistillConfig)
    store.store(group="schema/model", name="model", node=ModelConfig)
    store.store(group="schema/model", name="adder_model", node=AdderModelConfig)
    for name, module in {"cifar10": data.CIFAR10DataModule, "cifar100": data.CIFAR100DataModule,
                         "mnist": data.MNISTDataModule, "synthetic": data.SyntheticDataModule,
                         "imagenet_subset": data.ImageNetSubsetDataModule,
                         "imagenet_cifar10": data.ImageNetCIFAR10DataModule}.items():
        store.store(group="schema/data", name=name, node=signature_schema(module))
    store.store(group="schema/trainer", name="trainer",
                node=signature_schema(pl.Trainer, exclude=("callbacks", "logger", "plugins")))
    store.store(group="schema/optimizer", name="sgd",
                node=signature_schema(torch.optim.SGD, exclude=("params",), partial=True))
    for name in ("cosine", "poly", "step"):
        store.store(group="schema/scheduler", name=name,
                    node=signature_schema(getattr(schedules, name), exclude=("optimizer", "total_steps"),
                                          partial=True))
    store.store(group="schema/adalr", name="adalr", node=signature_schema(adalr.AdaptiveLR))
