"""Tolerance rows for SparseAdam. TO BE FOLDED INTO tests/tolerances.py by the lead at merge.

pyoptim.SparseAdam vs tests/reference_sparse_adam.py (same math type, same expression tree, same
duplicate-summation order): every operation is a correctly rounded IEEE operation in both, so
the results are bitwise equal for every dtype (0 ULP). A non-zero difference is a bug (wrong
formula, wrong summation order, wrong rounding of a coefficient), never noise.

pyoptim.SparseAdam vs torch.optim.SparseAdam run under tests/reference_sparse_adam.py's
ieee_torch_mode (torch's own SparseAdam code with IEEE sqrt and position-order duplicate sums):
bitwise equal for float32 / float64, where torch computes in the param dtype. For bfloat16 /
float16 torch rounds every intermediate to the param dtype while pyoptim computes in float32 and
rounds once, so those are compared with the reference only.

vs torch.optim.SparseAdam as built (no pins): torch's CPU sqrt is MKL VML's (up to 1 ULP off;
~15% of float32 results), and with many duplicates its coalesce() sums in a different order
(1-2 ULP per sum). Each step's update then differs by a few ULP of the update, not of the
param. Measured over the 200-step parity test (lr=0.01, both models, maximize on and off): the
largest absolute difference in param / exp_avg / exp_avg_sq is 1.4e-6 for float32 and 1.8e-15
for float64 (relative differences are large only where exp_avg is near zero, hence atol). The
rows give ~10x headroom on atol.
"""

import torch

# (atol, rtol) per param dtype, vs the same-precision reference.
SPARSE_ADAM_VS_REFERENCE = {
    torch.float32: (0.0, 0.0),
    torch.float64: (0.0, 0.0),
    torch.bfloat16: (0.0, 0.0),
    torch.float16: (0.0, 0.0),
}

# vs torch.optim.SparseAdam under ieee_torch_mode.
SPARSE_ADAM_VS_TORCH_IEEE = {
    torch.float32: (0.0, 0.0),
    torch.float64: (0.0, 0.0),
}

# vs torch.optim.SparseAdam as built (MKL sqrt, unstable-sort sum order); see above.
SPARSE_ADAM_VS_TORCH_MKL = {
    torch.float32: (1.5e-5, 1e-5),
    torch.float64: (2e-14, 1e-13),
}
