"""THE tolerance table. No tolerance literal lives anywhere else in tests/.

Op level (tests/test_kernels.py). For every tensor the op writes we measure a normwise error

    err(x) = max_i |x_i - oracle_i| / max(max_i |oracle_i|, max_i |x0_i|)      (x0: the input)

against the float64 oracle of tests/reference.py, for the kernel and for the same-precision
reference (the error the dtype itself carries, see reference.py), and require

    err(kernel) <= k * err(same-precision reference) + floor_ulps * finfo(dtype).eps

Normwise, not elementwise: where a result cancels (param ~ step, grad ~ -wd * param) both errors
are large relative to that element, but small relative to the tensor. k and the floor are per
(op, dtype) and each row says why. Never raise a row to get a test green: find the cause.

Adam's denominator (tests/test_kernels.py): the kernel multiplies by the reciprocal of
sqrt(bias_correction2) where torch divides by it; the same-precision reference copies the
kernel's form, so the distance to torch's form is bounded separately: DIVISION_FORM.

Class level (tests/test_optim_parity.py): pyoptim and torch.optim trained side by side from the
same init on the same data; see PARITY (Adam, reduced-precision SGD), SGD_EXACT / sgd_tol (SGD)
and SPARSE_ADAM_VS_TORCH_* (SparseAdam), each for every flag combination torch accepts.

CUDA (tests/test_cuda*.py): CUDA_* rows, at the end.
"""

from __future__ import annotations

import dataclasses

import torch
from helpers import ulp
from torch import Tensor


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


# ==============================================================================================
# Adam's denominator: the kernel's reciprocal form vs torch's division form (test_kernels.py)
# ==============================================================================================
# torch:  denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
#         bias_correction2_sqrt = bias_correction2 ** 0.5 is libm's pow in double; torch's CPU
#         div (and its fused kernels) round that Python float to the opmath type T first
#         (measured: x / b == x / float32(b) bit for bit for float32 x).
# kernel: denom = sqrt(exp_avg_sq) * r + eps, r = 1 / sqrt(bias_correction2) computed in double
#         (a correctly rounded sqrt, then a division) and rounded ONCE to T (Note [One division
#         per element] in csrc/include/pyoptim/math/adam.h).
# Both take the same q = sqrt(v) (IEEE sqrt, in T). Let x = q / sqrt(bc2) exactly, u the unit
# roundoff of T (2^-24 float, 2^-53 double); rounding a value of significand m in [1, 2) to T
# has relative error <= u / m, and u|x| < ulp(x).
#   T = float: r = (1/B)(1 + rho), b = B(1 + beta) (B = sqrt(bc2)), one rounding to float each
#     after double work (O(2^-53)). Their significands multiply to 1 or 2 (r ~ 1/b), so
#     |rho| + |beta| <= u (1/m_B + m_B/2) <= 1.5u. Before their last rounding the two quotients,
#     x(1 + rho) and x / (1 + beta), are < 1.5 ulp(x) apart; round to nearest is monotone and
#     the grid uniform, so after it they are at most 2 ulps apart.
#   T = double: r = fl(1 / fl(sqrt(bc2))), two roundings, while torch's b is libm's pow(bc2, 0.5):
#     where pow returns the correctly rounded sqrt s, the two are fl(q * fl(1/s)) and fl(q / s),
#     < 1 ulp apart before rounding: <= 1 ulp. glibc's pow is not correctly rounded everywhere
#     (< 1 ulp: pow(1 - 2^-53, 0.5) = 1.0, sqrt gives 1 - 2^-53); then b and s are neighbours
#     and the quotients are < 3 ulps apart before rounding: <= 3 ulps.
#   + eps: the same eps >= 0 added to both, rounded: still <= that many ulps (of the larger
#     sum: the gap does not grow, the ulp can only).
# Measured (8M random (beta2, step, v) triples; before + eps, the maximum is the same after):
# float32 1 ulp in 23%, 2 ulps in 0.17% of the elements; float64 1 ulp in 22%, 2 ulps in 0.01%,
# all of them at a bc2 where pow(bc2, 0.5) != sqrt(bc2) (never 3). Against the correctly rounded
# sqrt(v) / sqrt(bc2) (no rounded divisor) the float kernel is within 1 ulp (measured: 1 ulp in 1%
# of the elements).
DIVISION_FORM_DENOM_ULPS = {torch.float32: 2, torch.float64: 3}  # per opmath type T
#
# To the param, one step from the same state (exp_avg, exp_avg_sq, max_exp_avg_sq and the step
# count are untouched by the denominator: bitwise equal). With D = max(d_k, d_t) and n the row
# above, |d_k - d_t| <= n ulp(D) <= 2nu D =: rD. N = fl(-step_size * exp_avg) is the same on both
# sides, so the exact quotients differ by |N| |d_k - d_t| / (d_k d_t) <= r Q, where
# Q = |N| / min(d_k, d_t) >= both; each is rounded (<= ulp_T(Q) together): the updates U_k, U_t
# differ by <= r Q + ulp_T(Q). The param p' (after any decoupled decay, the same on both sides)
# plus U is rounded to T (+ ulp_T(P), P = max |stored param|, since ulp(y) <= ulp(round(y))), and
# for bfloat16 / float16 rounded once more on store (+ ulp_dtype(P)). Q from the division-form
# reference's own update U_t: |N / d_t| <= |U_t| + ulp_T(U_t) / 2 and min d >= (1 - r) d_t, so
# Q <= (|U_t| + ulp_T(U_t) / 2) / (1 - r). Elementwise; no measured factor, no margin: it is the
# bound itself, and its premise (the denominators) is checked next to it.


def division_form_param_bound(update: Tensor, p_kernel: Tensor, p_torch: Tensor,
                              dtype: torch.dtype) -> Tensor:
    """Elementwise bound on |p_kernel - p_torch| after one Adam step from the same state
    (DIVISION_FORM_DENOM_ULPS above); `update` is the division-form reference's own update
    -step_size * exp_avg / denom, in opmath."""
    t = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.finfo(t).eps / 2
    r = 2 * DIVISION_FORM_DENOM_ULPS[t] * u
    ut = update.detach().double().abs()
    q = (ut + ulp(ut, t) / 2) / (1 - r)
    p = torch.maximum(p_kernel.detach().double().abs(), p_torch.detach().double().abs())
    bound = r * q + ulp(q, t) + ulp(p, t)
    if dtype != t:
        bound = bound + ulp(p, dtype)
    return bound


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
    # SGD, bfloat16 / float16 params (test_sgd.py): the reference is torch's fused=True, which
    # like pyoptim computes in float32 and rounds once per step; the yardstick is again its
    # distance to torch's for-loop (which rounds after each of its <= 4 ops in the param dtype).
    ("sgd", torch.bfloat16): ParityTol(k=4.0, floor_ulps=1.0, why=(
        "pyoptim and torch's fused SGD differ in float32 only by the FMA in add(alpha) (torch's "
        "fused CPU kernel does not fuse it: in float32 it differs from torch's for-loop by ~3e-8 "
        "after 20 steps where pyoptim equals the for-loop): <= 1 float32 rounding per op, which "
        "shows in the stored bfloat16 / float16 param only when it straddles a rounding "
        "boundary of the param dtype (one ulp of it). Measured on the test MLP (20 steps, plain, "
        "momentum, nesterov + weight decay, dampening + maximize): pyoptim equals fused bit for "
        "bit, while |fused - loop| is 1.2e-4 .. 1.5e-3. k=4 as for Adam; the floor (one ulp of "
        "the dtype times max |param|) covers a run where torch's two agree; a formula slip "
        "(momentum, dampening, decay order) moves params by far more than torch's spread.")),
}
PARITY["sgd", torch.float16] = PARITY["sgd", torch.bfloat16]

# The flag matrix (test_optim_parity.py::test_adam_every_flag_combination_matches_torch): the
# same rows, over MATRIX_STEPS steps, for every combination torch accepts (Adam / AdamW x amsgrad
# x maximize x weight_decay 0 / 0.1 x foreach / fused / capturable / None x float / Tensor lr),
# for the params and for each state tensor (exp_avg, exp_avg_sq, max_exp_avg_sq, each with its
# own spread and scale). The reference is torch's own run with the same flags (fused=True its
# fused kernel, foreach=True its foreach path, fused=True with capturable=True torch's run with
# both; capturable=True alone, which torch refuses on CPU params, its for-loop); the yardstick
# is still |fused - loop|. Measured on the test MLP, float32,
# 10 steps, every combination: |pyoptim - reference| <= 0.12 of the bound (params <= 0.09,
# exp_avg_sq 0.12). After 10 steps torch's own spread is an ulp or two, so the floor carries most
# of the bound: |pyoptim - reference| / spread reaches 2.2 for the params and 8 for exp_avg_sq
# (a one-ulp spread). Slips stay far outside the bound (~6e-7 on the params): measured on the
# same run, L2 instead of decoupled decay moves them by 0.2, amsgrad's max by 9e-6, eps x 10 by
# 6e-6, beta2 0.999 -> 0.9985 by 2.5e-5.
MATRIX_STEPS = 10


def parity_tolerance(family: str, dtype: torch.dtype) -> ParityTol:
    return PARITY[(family, dtype)]


# A few steps of a small problem against torch's default step, where the test's point is what a
# step accepts (test_bad_input.py: an integer Tensor lr; test_optim_parity.py: a conjugated
# complex grad) and the numbers only have to be torch's. pyoptim and torch round differently
# (PARITY's why), and a step adds at most about one ulp of the largest param to the distance:
# measured over every optimizer those tests step, after 2-3 steps, <= 0.94 eps * max |param|.
# Bound: FEW_STEPS_ULPS eps * max |param| per step, absolute.
FEW_STEPS_ULPS = 2


def few_steps_tol(reference: Tensor, steps: int) -> dict:
    """assert_close kwargs for pyoptim against torch's `reference` params after `steps` steps."""
    eps = torch.finfo(reference.real.dtype if reference.is_complex() else reference.dtype).eps
    return dict(atol=FEW_STEPS_ULPS * steps * eps * reference.abs().max().item(), rtol=0.0)

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
    return sgd_unfused_tol(dtype, steps)


def sgd_unfused_tol(dtype: torch.dtype, steps: int = 1) -> dict:
    """SGD_UNFUSED's bound, whatever ATen fuses: for a torch side that rounds add(alpha)'s
    product first on any build (torch.optim.SGD on complex params computes in complex arithmetic,
    test_bad_input.py::test_complex_grad_with_conjugation_bit_as_torch; measured <= 2 ulps after
    2 steps)."""
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    rtol = max(SGD_UNFUSED_ULPS * steps * eps, torch.finfo(dtype).eps if dtype in (
        torch.bfloat16, torch.float16) else 0.0)
    return dict(atol=rtol, rtol=rtol)


def sgd_vs_torch_bound(spread: float, scale: float, dtype: torch.dtype, steps: int) -> float:
    """Bound on max |pyoptim - torch(flags)| where torch(flags) is torch's foreach=True or
    fused=True run, spread = max |torch(flags) - torch(foreach=False)| and scale =
    max |torch(foreach=False)|. pyoptim equals torch's for-loop within sgd_tol (bit for bit where
    ATen fuses add(alpha)), so by the triangle inequality it is within torch's own spread of the
    other run plus that allowance; no factor, no floor. Measured (float32, every flag
    combination, 10-20 steps): torch's foreach equals its for-loop bit for bit on CPU; its fused
    kernel (add(alpha) without FMA) differs from it by ~3e-8 after 20 steps, and pyoptim's
    distance to fused is exactly that spread."""
    tol = sgd_tol(dtype, steps)
    return spread + tol["atol"] + tol["rtol"] * scale


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


# ==============================================================================================
# CUDA: tests/test_cuda.py, tests/test_cuda_sgd_sparse.py (not re-measured since: no GPU)
# ==============================================================================================
# CUDA kernels vs the CPU kernels: bitwise (the same math headers, no contraction on either
# side; Note [Bitwise agreement across paths]), with one exception, the step count on the device:
# CUDA_DEVICE_STEP_PARAM_ULPS. With capturable / fused Adam the bias corrections 1 - beta^step are
# computed on the GPU, whose double pow is documented to 2 ulps (CUDA C Programming Guide,
# mathematical functions) where the host's glibc pow is within 1. float32 / bfloat16 / float16
# params: the coefficients are then narrowed to float, which absorbs a difference in the last
# bits of a double (a change of the float only where the double lies within 2^-29 relative of a
# float rounding boundary): 0 ulps, measured on an H100. float64 params: 1 - beta^t moves by
# <= 3 ulp(beta^t) absolute, the step (|U| ~ lr = 3e-3 in test_device_steps_match_cpu) by that
# relative to bc = 1 - beta^t: at t = 2, beta2 = 0.999 (bc2 ~ 2e-3), 1.6e-13 relative in
# 1 / sqrt(bc2), ~5e-16 in U, about 2 ulps of a param near 1 after its own rounding. That is a
# bound for |param| ~ 1 only (a param of 1e-2 would show ~100 ulps); the row holds for this
# test's data because the device pow agreed with the host's on those (beta, t) in the H100 run.
CUDA_DEVICE_STEP_PARAM_ULPS = {torch.float32: 0, torch.float64: 2, torch.bfloat16: 0,
                               torch.float16: 0}

# pyoptim vs torch.optim on the GPU, as torch.testing.assert_close kwargs (|a - b| <= atol +
# rtol |b|), each for its test's fixed data (seeded; float32).
#
# Adam / AdamW vs torch's fused CUDA Adam (test_class_matches_torch_fused: 10 steps, lr 1e-2,
# betas (0.8, 0.99), weight_decay 0.05, amsgrad on and off). torch's kernel lets nvcc contract
# a * b + c into FMAs and computes its step size its own way: per step the updates differ by a
# few float32 roundings of U, |U| <= lr (1 - b1) / sqrt(1 - b2) / sqrt(1 - b1^2 / b2) = 0.034
# (Kingma & Ba's bound for b1^2 < b2): <= 8u |U| ~ 1.6e-8, plus a param rounding that may go the
# other way (<= 1 ulp of |p| <= 4: 4.8e-7). Ten steps: <= 1.6e-7 near 0 (atol 1e-6) and
# <= 10 ulps ~ 1.2e-6 relative for |p| ~ 1..4 (rtol 1e-5). exp_avg: torch's lerp with FMA vs
# ours without differs by <= half an ulp of (1 - b1) * (g - m) per step, carried with factor
# b1 = 0.8; relative to m that is a few ulps (rtol 1e-5); near m = 0 the worst case is
# 3e-8 / (1 - 0.8) = 1.5e-7, above atol 1e-7: the row relies on the measured run (H100, passed),
# not on the worst case.
CUDA_ADAM_VS_TORCH_FUSED = {"param": dict(atol=1e-6, rtol=1e-5),
                            "exp_avg": dict(atol=1e-7, rtol=1e-5)}

# SGD vs torch's single-tensor SGD on CUDA (test_sgd_class_matches_torch_on_cuda: 3 steps, lr 0.1,
# momentum 0.9, nesterov, weight_decay 1e-2). The same expressions; torch's add(alpha) on CUDA is
# a * alpha + b contracted by nvcc into one FMA, as ours is an explicit fma, so they should agree
# bit for bit; where one side did not fuse, each of the <= 4 ops of a step differs by <= 1
# rounding (SGD_UNFUSED's argument): 3 steps x 4 x u = 7.2e-7 relative (rtol 1e-6), and for
# elements near 0 (Linear(64, 32) init, |p| < 0.125, ulp <= 7.5e-9) 12 roundings <= 9e-8 (atol).
CUDA_SGD_VS_TORCH = dict(atol=1e-7, rtol=1e-6)

# SparseAdam vs torch.optim.SparseAdam on CUDA (test_sparse_adam_class_matches_torch_on_cuda:
# 3 steps, lr 1e-2, 4096 lookups in 1000 rows, loss sum(w[idx]^2)). Every duplicate of a row
# carries the same value 2 w[row] (no cancellation), so torch's own summation tree (its CUDA
# coalesce) changes a row's sum by <= (n - 1) u relative (n ~ 4, rarely 16); Adam's update is
# invariant to the scale of g, so that moves U by <= 2 (n - 1) u |U|. torch's CUDA sqrt is
# correctly rounded (nvcc's default -prec-sqrt=true) and its expression tree is the one ours
# mirrors (bitwise under ieee_torch_mode on the CPU); nvcc contracting torch's a * b + c into FMAs
# adds a few roundings of U. |U| ~ lr, so <= ~40u lr = 2.4e-8 a step, plus a param rounding that
# may go the other way (<= 1 ulp of |p| <= 4: 4.8e-7). Three steps: <= 1.5e-6 for |p| ~ 4 (rtol
# 1e-5 allows 4e-5), <= 1e-7 near 0 (atol 1e-6).
CUDA_SPARSE_ADAM_VS_TORCH = dict(atol=1e-6, rtol=1e-5)

# Plain sparse SGD vs torch on CUDA (test_sgd_sparse_class_matches_torch_on_cuda: 3 steps, lr 0.1,
# the same loss). torch adds each duplicate's -lr * g = -0.2 w[row] into the param (index_add: the
# product rounded, then added) where ours applies each duplicate with one fma; the addends of a
# row are all equal, so their order does not matter. Each addition then differs by <= one
# rounding of the product, u |0.2 w|, relative to the row's own value: with n duplicates a row
# (~4, rarely 16) <= n x 0.2 x u ~ 2e-7 relative a step (rtol 1e-5) and nothing near 0 that atol
# (1e-6) would have to cover.
CUDA_SPARSE_SGD_VS_TORCH = dict(atol=1e-6, rtol=1e-5)


# ==============================================================================================
# Adagrad with sparse grads (sparse_adagrad_) and RowWiseAdagrad (rowwise_adagrad_):
# tests/test_adagrad_sparse.py, tests/test_rowwise_adagrad.py
# ==============================================================================================
# sparse_adagrad_ vs tests/reference_adagrad_rows.py: the same IEEE operations in the same order
# and opmath (duplicates in pyoptim's order, IEEE sqrt, `param.add_(u, alpha=-clr)` one fused
# multiply-add on both sides): BITWISE for every dtype, where ATen fuses add(alpha)
# (ATEN_FUSES_ADD_ALPHA). Where it does not, the reference rounds -clr * u once more per step:
# sgd_tol's bound (a few ulps of the opmath per step).
def sparse_adagrad_tol(dtype: torch.dtype, steps: int = 1) -> dict:
    return sgd_tol(dtype, steps)


# rowwise_adagrad_ vs the reference: no fused operation on either side, the row sum in the lane
# order of Note [Row sum lanes] on both: BITWISE for every dtype, whatever ATen fuses.
ROWWISE_ADAGRAD_EXACT = dict(atol=0.0, rtol=0.0)

# RowWiseAdagrad vs FBGEMM's CPU TBE (EXACT_ROWWISE_ADAGRAD, float32 table, weight_decay 0):
# the same operations except the order of the row's sum of squares (FBGEMM: left to right;
# pyoptim: 32 lanes, Note [Row sum lanes]) and the order in which FBGEMM's backward sums a row's
# pooled gradients. Each changes the row's sum by a few ulps (relative <= D * 2^-24), the
# multiplier by half of that relative, so each step's update moves by ~1e-6 relative, <= ~1e-7
# absolute with lr = 0.1: over the test's 5 steps <= 5e-7. Measured (widths 4, 40, 128; params
# ~0.1, lr 0.1): max |pyoptim - FBGEMM| = 6e-8 in the params. The rows hold the 5e-7 bound.
ROWWISE_ADAGRAD_VS_FBGEMM = dict(atol=5e-7, rtol=1e-6)


# ---- 8-bit optimizer states (Note [Reduced-precision optimizer states] in math/quantize.h) ---
# quantize_8bit / dequantize_8bit round to nearest; the bound is in units of the element's
# block scale (the step between two codes: absmax / 127 for exp_avg, sqrt(max v) / 256 for
# sqrt(exp_avg_sq)). Encoding computes floor((floor(x * inv16) + 2^15) / 2^16): half a code,
# plus 2^-16 from the inner floor, plus float32's rounding of x * inv16 (below 2^-17 codes at
# |x * inv| <= 127 or 256) and of inv and scale themselves (x * inv * scale = x (1 +- 2^-22):
# at most 256 * 2^-22 codes), plus the decode's one rounding (2^-24 relative): < 2^-10 in all.
# sqrt(exp_avg_sq): the map has no zero (code c stands for (c + 1) * scale), so a root below
# half a step rounds up to the first level: within one step there, half a step elsewhere; the
# test takes sqrt of the decoded square (one more ulp, inside the 2^-10).
Q8_ROUND_TRIP = {"signed_levels": 0.5 + 2.0**-10, "sqrt_levels": 1.0 + 2.0**-10}
# One AdamW step (lr 1e-3, step 2) after a float32 torch.optim checkpoint is converted on load:
# the distance to torch's step, in units of lr. Adam's normalized update m / sqrt(v) is below
# ~3 at step 2; bfloat16 moments carry 2^-9 relative error each: ~3 * 2^-8 < 0.02. 8 bits:
# m within half a step of absmax / 127 and sqrt(v) of sqrt(max v) / 256 per block; an element
# with a small sqrt(v) in a block with a large one moves most: its update can change by a large
# fraction of itself (the price of the format; bounded by the excluded zero), so up to 1 lr.
Q8_LOAD_STEP = {"bfloat16": 0.02, "8bit": 1.0}
