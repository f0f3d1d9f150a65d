"""pyoptim: fused, multithreaded drop-in replacements for torch.optim.

    import pyoptim
    opt = pyoptim.Adam(model.parameters(), lr=1e-3)   # instead of torch.optim.Adam

The update step runs in native C++ (SIMD, chosen at run time: see `cpu_capability()`).
"""

import torch  # noqa: F401  (loads libtorch before our extension)

from . import _C  # noqa: F401  (registers torch.ops.pyoptim.*)
from ._ops import cpu_capability, max_cpu_capability
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .rowwise_adagrad import RowWiseAdagrad
from .sgd import SGD
from .sparse_adam import SparseAdam

__all__ = [
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "RowWiseAdagrad",
    "SGD",
    "SparseAdam",
    "cpu_capability",
    "max_cpu_capability",
]
__version__ = "0.1.0"
