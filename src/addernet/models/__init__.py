"""The paper's networks by name, their building blocks, and operation counting."""

from addernet.models import zoo as _zoo  # noqa: F401  (registers the models)
from addernet.models.ops import ENERGY_PJ, OpCount, count_ops
from addernet.models.registry import create_model, is_adder_model, list_models, register_model
from addernet.models.resnet import BasicBlock, Bottleneck, ResNet, layer_factory

__all__ = ["ENERGY_PJ", "BasicBlock", "Bottleneck", "OpCount", "ResNet", "count_ops", "create_model",
           "is_adder_model", "layer_factory", "list_models", "register_model"]
