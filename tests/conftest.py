import os
import sys
from pathlib import Path

import torch

# tests import their helpers (brute_force, ...) as top-level modules
sys.path.insert(0, str(Path(__file__).parent))

# Without a GPU the Triton kernels run in Triton's interpreter; it must be chosen before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
