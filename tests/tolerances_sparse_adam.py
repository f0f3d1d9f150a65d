"""Tolerance rows for SparseAdam. TO BE FOLDED INTO tests/tolerances.py by the lead at merge.

pyoptim.SparseAdam vs tests/reference_sparse_adam.py (same math type, same expression tree, same
duplicate-summation order): every operation is a correctly rounded IEEE operation in both, so
the results are bitwise equal for every dtype (0 ULP). A non-zero difference is a bug (wrong
formula, wrong summation order, wrong rounding of a coefficient), never noise.

pyoptim.SparseAdam vs torch.optim.SparseAdam: bitwise equal for float32 / float64 (torch computes
in the param dtype, which is pyoptim's math type there). For bfloat16 / float16 torch rounds
every intermediate to the param dtype while pyoptim computes in float32 and rounds once, so they
are not compared with each other; each is compared with the reference instead.
"""

import torch

# (atol, rtol) per param dtype, vs the same-precision reference.
SPARSE_ADAM_VS_REFERENCE = {
    torch.float32: (0.0, 0.0),
    torch.float64: (0.0, 0.0),
    torch.bfloat16: (0.0, 0.0),
    torch.float16: (0.0, 0.0),
}

# vs torch.optim.SparseAdam, param dtypes torch computes in the same math type.
SPARSE_ADAM_VS_TORCH = {
    torch.float32: (0.0, 0.0),
    torch.float64: (0.0, 0.0),
}
