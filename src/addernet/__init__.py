"""AdderNet: adder layers (negative L1 instead of multiply-accumulate), their networks and their training.

Where things live: ``addernet.nn`` (the operator, the layer, the kernels), ``addernet.models`` (networks by
name), ``addernet.data`` (Lightning data modules), ``addernet.training`` (the LightningModule, AdaLR,
distillation, callbacks, checkpoints, signals), ``addernet.deploy`` (int8 quantisation and its files),
``addernet.experiments`` (what ``src/*.py`` run: training, sweeps, reports, benchmarks, export).

Importing it before PyTorch makes PyTorch's OpenMP threads sleep while they wait instead of spinning
(``OMP_WAIT_POLICY=PASSIVE``), unless ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set already: a spinning thread
that shares its core with another program takes the time of the threads that do the work, which made
training several times slower on a busy machine (see ``python src/bench.py --thread-policy``). OpenMP reads the
setting once, when PyTorch is loaded: the entry points import addernet first.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from addernet.nn import Adder2d, adder2d, get_backend, set_backend  # noqa: E402
from addernet import models  # noqa: E402  (addernet.models.create_model after a plain `import addernet`)

__all__ = ["Adder2d", "adder2d", "get_backend", "set_backend", "models"]
__version__ = "0.1.0"
