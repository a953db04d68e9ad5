"""AdderNet: adder layers (negative L1 instead of multiply-accumulate), their networks and their training."""

from addernet.functional import adder2d
from addernet.kernels import get_backend, set_backend
from addernet.layer import Adder2d
from addernet import models  # noqa: E402  (addernet.models.create_model after a plain `import addernet`)

__all__ = ["Adder2d", "adder2d", "get_backend", "set_backend", "models"]
__version__ = "0.1.0"
