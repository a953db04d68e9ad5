"""Models by name: ``create_model("adder_resnet20", num_classes=10)``."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = builder
        return builder
    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


def is_adder_model(name: str) -> bool:
    return name.startswith("adder_")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword options go to its builder (``num_classes``, ``weight_grad``...). An option
    given as None takes the builder's default (the configs' way of leaving one unset)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name](**{k: v for k, v in kwargs.items() if v is not None})
