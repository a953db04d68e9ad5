import os
import sys
from pathlib import Path

import torch

# tests import their helpers (brute_force, ...) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (``-n auto``, the default) one worker runs per core: one thread each, in the workers and
# in the scripts they start, so that the machine is never oversubscribed (OpenMP threads that lose their
# core stall each other).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
