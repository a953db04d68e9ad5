"""AdderNet: adder layers (negative L1 instead of multiply-accumulate), their networks and their training.

Where things live: ``addernet.nn`` (the operator, the layer, the kernels, int8), ``addernet.models`` (networks by
name), ``addernet.data`` (Lightning data modules), ``addernet.training`` (the LightningModule, AdaLR,
distillation, callbacks), ``addernet.experiments`` (what ``src/*.py`` run: training, sweeps, reports, benchmarks,
export).
"""

from addernet.nn import Adder2d, adder2d, get_backend, set_backend
from addernet import models  # noqa: E402  (addernet.models.create_model after a plain `import addernet`)

__all__ = ["Adder2d", "adder2d", "get_backend", "set_backend", "models"]
__version__ = "0.1.0"
