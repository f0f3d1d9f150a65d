"""THE tolerance table. No tolerance literal lives anywhere else in tests/.

Op level (tests/test_kernels.py). For every tensor the op writes we measure a normwise error

    err(x) = max_i |x_i - oracle_i| / max(max_i |oracle_i|, max_i |x0_i|)      (x0: the input)

against the float64 oracle of tests/reference.py, for the kernel and for the same-precision
reference (the error the dtype itself carries, see reference.py), and require

    err(kernel) <= k * err(same-precision reference) + floor_ulps * finfo(dtype).eps

Normwise, not elementwise: where a result cancels (param ~ step, grad ~ -wd * param) both errors
are large relative to that element, but small relative to the tensor. k and the floor are per
(op, dtype) and each row says why. Never raise a row to get a test green: find the cause.

Class level (tests/test_optim_parity.py): pyoptim and torch.optim trained side by side from the
same init on the same data; see PARITY.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class OpTol:
    k: float  # multiple of the same-precision reference's error
    floor_ulps: float  # plus this many eps of the dtype (normwise)
    why: str
    # the kernel must equal the same-precision reference bit for bit (only where both perform
    # the same roundings; then any difference at all is an expression-order change)
    bitwise_to_reference: bool = False

    def bound(self, ref_err: float, dtype: torch.dtype) -> float:
        return self.k * ref_err + self.floor_ulps * torch.finfo(dtype).eps


_ADAM_SAME_ROUNDINGS = (
    "The kernel performs the same IEEE operations in the same order as the same-precision "
    "reference (widen on load, opmath, one rounding per op, round once on store; no FMA on "
    "either side; IEEE sqrt on both), so its error IS the reference's error: measured bitwise "
    "equal for every dtype over thousands of hypothesis cases. k=1 and no floor; an excess "
    "means an expression changed order or rounding."
)

OP_TOLERANCES: dict[tuple[str, torch.dtype], OpTol] = {
    ("adam", torch.float32): OpTol(1.0, 0.0, _ADAM_SAME_ROUNDINGS, bitwise_to_reference=True),
    # float64: the reference's error is measured against torch.optim's own ops in float64,
    # which use FMA (more accurate where grad + wd * param cancels); same rule as above.
    ("adam", torch.float64): OpTol(1.0, 0.0, _ADAM_SAME_ROUNDINGS, bitwise_to_reference=True),
    # bfloat16 / float16: float32 math, one rounding on store, as the reference.
    ("adam", torch.bfloat16): OpTol(1.0, 0.0, _ADAM_SAME_ROUNDINGS, bitwise_to_reference=True),
    ("adam", torch.float16): OpTol(1.0, 0.0, _ADAM_SAME_ROUNDINGS, bitwise_to_reference=True),
}


def op_tolerance(op: str, dtype: torch.dtype) -> OpTol:
    return OP_TOLERANCES[(op, dtype)]


@dataclasses.dataclass(frozen=True)
class ParityTol:
    k: float  # multiple of torch's own disagreement (for-loop vs fused=True)
    floor_ulps: float  # plus this many eps of the dtype, times max |param|
    why: str

    def bound(self, torch_spread: float, scale: float, dtype: torch.dtype) -> float:
        return self.k * torch_spread + self.floor_ulps * torch.finfo(dtype).eps * scale


_PARITY_WHY = (
    "pyoptim and torch.optim's for-loop Adam round differently (torch: FMA in lerp/addcmul/"
    "add(alpha), a sqrt that is not correctly rounded, bf16/fp16 intermediates rounded per op), "
    "and training feeds each ulp back through the loss, so after 200 steps the params drift "
    "apart by an amount that depends on the run. The yardstick is torch's own drift: its "
    "for-loop and fused=True implementations, trained side by side. Measured on the test MLP "
    "(every config, float32 and float64): |pyoptim - loop| <= 2.0 x |fused - loop|. k=4 gives 2x "
    "margin; the floor covers runs where torch's two happen to agree bitwise. A formula slip "
    "(bias correction, eps placement, decay order) moves params by >1e-3, far outside."
)

# (optimizer family, param dtype) -> bound on max |pyoptim - torch for-loop| over all params
# after PARITY_STEPS steps of the same training run (tests/test_optim_parity.py)
PARITY_STEPS = 200
PARITY: dict[tuple[str, torch.dtype], ParityTol] = {
    ("adam", torch.float32): ParityTol(k=4.0, floor_ulps=16.0, why=_PARITY_WHY),
    ("adam", torch.float64): ParityTol(k=4.0, floor_ulps=16.0, why=_PARITY_WHY),
    # bfloat16 / float16: torch's for-loop rounds every intermediate to the param dtype while
    # fused (and pyoptim) compute in float32: |fused - loop| is large and measures exactly that.
    ("adam", torch.bfloat16): ParityTol(k=4.0, floor_ulps=16.0, why=_PARITY_WHY),
    ("adam", torch.float16): ParityTol(k=4.0, floor_ulps=16.0, why=_PARITY_WHY),
}


def parity_tolerance(family: str, dtype: torch.dtype) -> ParityTol:
    return PARITY[(family, dtype)]


# ==============================================================================================
# SGD (sgd_, sgd_sparse_): tests/test_sgd.py, tests/test_sgd_sparse.py
# ==============================================================================================
# SGD_EXACT: the sgd_ / sgd_sparse_ kernels vs tests/reference_sgd.py, every dtype: BITWISE.
# Why this is not optimistic: the kernel performs the same IEEE operations, in the same order and
# in the same opmath, as the reference (widen on load; `x.add(y, alpha=a)` = one fused multiply-add
# on both sides, since ATen's AVX2/AVX-512 add kernel is vec::fmadd and the kernel calls vfma;
# `buf.mul(m)` a plain multiply on both; round once on store). Duplicate sparse rows are summed in
# position order, in blocks of 256, on both sides (Note [Blocked duplicate sums]; coalesce's order
# for up to 256 duplicates). Measured: equal on every ISA level.
#
# That premise needs ATen's own CPU kernels to fuse `add(alpha)`; `ATEN_FUSES_ADD_ALPHA` probes it.
# Where they do not (ATEN_CPU_CAPABILITY=default), each of the <= 4 fused ops of a step may differ
# by one rounding, so the bound becomes SGD_UNFUSED (4 ulps of the opmath, relative, per step).
def _probe() -> bool:
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 is not a float32 (spacing 2^-23 in [1, 2)): adding
    # -(1 + 2^-11) gives 2^-24 with one rounding, 0 when the product is rounded first.
    a = torch.full((64,), 1 + 2.0**-12, dtype=torch.float32)
    c = torch.full((64,), -(1 + 2.0**-11), dtype=torch.float32)
    fused = c.add(a, alpha=1 + 2.0**-12)
    return bool((fused != 0).all())


ATEN_FUSES_ADD_ALPHA = _probe()

SGD_EXACT = dict(atol=0.0, rtol=0.0)
SGD_UNFUSED_ULPS = 4


def sgd_tol(dtype: torch.dtype, steps: int = 1) -> dict:
    """assert_close kwargs for kernel-vs-reference after `steps` steps."""
    if ATEN_FUSES_ADD_ALPHA:
        return SGD_EXACT
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    rtol = max(SGD_UNFUSED_ULPS * steps * eps, torch.finfo(dtype).eps if dtype in (
        torch.bfloat16, torch.float16) else 0.0)
    return dict(atol=rtol, rtol=rtol)


# ==============================================================================================
# SparseAdam (sparse_adam_): tests/test_sparse_adam.py
# ==============================================================================================
# pyoptim.SparseAdam vs tests/reference_sparse_adam.py (same math type, same expression tree, same
# duplicate-summation order): every operation is a correctly rounded IEEE operation in both, so
# the results are bitwise equal for every dtype (0 ULP). A non-zero difference is a bug (wrong
# formula, wrong summation order, wrong rounding of a coefficient), never noise.
#
# pyoptim.SparseAdam vs torch.optim.SparseAdam run under tests/reference_sparse_adam.py's
# ieee_torch_mode (torch's own SparseAdam code with IEEE sqrt and position-order duplicate sums):
# bitwise equal for float32 / float64, where torch computes in the param dtype. For bfloat16 /
# float16 torch rounds every intermediate to the param dtype while pyoptim computes in float32 and
# rounds once, so those are compared with the reference only.
#
# vs torch.optim.SparseAdam as built (no pins): torch's CPU sqrt is MKL VML's (up to 1 ULP off;
# ~15% of float32 results), and with many duplicates its coalesce() sums in a different order
# (1-2 ULP per sum). Each step's update then differs by a few ULP of the update, not of the
# param. Measured over the 200-step parity test (lr=0.01, both models, maximize on and off): the
# largest absolute difference in param / exp_avg / exp_avg_sq is 1.4e-6 for float32 and 1.8e-15
# for float64 (relative differences are large only where exp_avg is near zero, hence atol). The
# rows give ~10x headroom on atol.
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
