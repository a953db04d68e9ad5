"""The adder operator and its layers: ``adder2d`` (functional, with the paper's gradients), ``Adder2d`` (the
module), ``kernels/`` (the reference, the compiled CPU, the Triton and the int8 implementations). Quantised networks
built from these are in :mod:`addernet.deploy`."""

from addernet.nn.functional import adder2d
from addernet.nn.kernels import get_backend, set_backend
from addernet.nn.layer import Adder2d

__all__ = ["Adder2d", "adder2d", "get_backend", "set_backend"]
