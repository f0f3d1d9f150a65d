"""Tolerances of the SGD tests. TO FOLD INTO tests/tolerances.py at merge.

SGD_EXACT: the sgd_ / sgd_sparse_ kernels vs tests/reference_sgd.py, every dtype: BITWISE.
Why this is not optimistic: the kernel performs the same IEEE operations, in the same order and
in the same opmath, as the reference (widen on load; `x.add(y, alpha=a)` = one fused multiply-add
on both sides, since ATen's AVX2/AVX-512 add kernel is vec::fmadd and the kernel calls vfma;
`buf.mul(m)` a plain multiply on both; round once on store). Duplicate sparse rows are summed left
to right in position order on both sides (coalesce's order). Measured: equal on every ISA level.

That premise needs ATen's own CPU kernels to fuse `add(alpha)`; `ATEN_FUSES_ADD_ALPHA` probes it.
Where they do not (ATEN_CPU_CAPABILITY=default), each of the <= 4 fused ops of a step may differ
by one rounding, so the bound becomes SGD_UNFUSED (4 ulps of the opmath, relative, per step).
"""

from __future__ import annotations

import torch


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
