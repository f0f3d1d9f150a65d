"""Plain-PyTorch references for the pyoptim ops, mirroring torch.optim's expression forms.

Each reference takes the same tensor lists and keyword arguments as the op it mirrors
(`torch.ops.pyoptim.<op>_`) and updates them in place, so a test can run op and reference on
copies of the same inputs. `compute_dtype` says in which precision the math runs:

  * the ORACLE: ``compute_dtype=torch.float64, torch_kernels=True`` on float64 copies, i.e.
    torch.optim's own code (lerp_, addcmul_, addcdiv_, add(alpha=)) in double;
  * the SAME-PRECISION reference: ``compute_dtype=None`` (the kernel's own precision, `opmath`:
    float32 for float32 / bfloat16 / float16 params, float64 for float64), reduced-precision
    tensors widened on load and rounded once on store, as torch's fused CPU kernel (and ours)
    does. Its distance to the oracle is the error the dtype itself carries;
    tests/tolerances.py allows the kernel a multiple of it. Its denominator multiplies by the
    reciprocal of sqrt(bias_correction2), as the kernel does, so that the two can be compared
    bit for bit; ``division_form=True`` divides as torch does instead, and
    tests/tolerances.py (DIVISION_FORM) bounds the kernel's distance to that form.

Why the same-precision reference spells the expressions out (``torch_kernels=False``): torch's
CPU kernels for lerp / addcmul / add(alpha=) are compiled with FMA contraction (measured: about
a quarter of float32 and float64 results differ from the separately rounded expression), while
pyoptim rounds every operation (no FMA, so every ISA level agrees bitwise). Calling torch's ops
would measure FMA's rounding instead of the dtype's: where a result cancels (grad ~ -wd * param)
FMA is exact and the separately rounded form is not, and "k x the reference's error" would
fail on a correct kernel. So the same-precision reference keeps torch.optim's expression
*forms* (the same operands, order and lerp branch) but as one torch op per rounding. The oracle
keeps torch's own ops: in double, FMA only makes it more accurate. Both use an IEEE
(correctly rounded) sqrt: see `_sqrt`.

To add an optimizer: write `<op>_reference` here with the op's signature, register it in
REFERENCES, and add its rows to tests/tolerances.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["adam_reference", "opmath_dtype", "REFERENCES"]


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the kernels compute in for params of `dtype` (torch's opmath_t)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _skip_step(found_inf: Tensor | None) -> bool:
    return found_inf is not None and float(found_inf.item()) != 0.0


def adam_reference(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    lr_tensor: Tensor | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    torch_kernels: bool = False,
    division_form: bool = False,
    trace: dict | None = None,
) -> None:
    """torch.optim.Adam/AdamW's single-tensor step (`_single_tensor_adam`), per tensor.

    GradScaler's unscale is a division by `grad_scale` (as torch's fused kernels do it);
    a non-zero `found_inf` skips the whole step, step counts included.

    The same-precision reference (torch_kernels=False) computes denom the kernel's way by
    default: sqrt(v) times the reciprocal of sqrt(bias_correction2), computed in double and
    rounded once (Note [One division per element] in math/adam.h), so that it can equal the
    kernel bit for bit. division_form=True computes it torch's way instead,
    sqrt(v) / bias_correction2_sqrt (torch rounds that Python float to the tensor's dtype and
    divides); tests/tolerances.py's DIVISION_FORM bounds the distance between the two. `trace`,
    when given, receives per tensor the opmath "denom" and "update" (-step_size * exp_avg /
    denom) of the last step.
    """
    if _skip_step(found_inf):
        return
    if lr_tensor is not None:
        lr = float(lr_tensor.item())
    for i, param in enumerate(params):
        cd = compute_dtype or opmath_dtype(param.dtype)
        # the step count: a float32 (or float64) tensor, incremented first; torch reads it back
        # as a Python float and computes the bias corrections in double.
        state_steps[i] += 1
        step = float(state_steps[i].item())
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5

        # widen on load
        p = param.to(cd, copy=True)
        grad = grads[i].to(cd, copy=True)
        exp_avg = exp_avgs[i].to(cd, copy=True)
        exp_avg_sq = exp_avg_sqs[i].to(cd, copy=True)

        if grad_scale is not None:
            grad = grad / grad_scale.to(cd)  # fused kernels: grad / grad_scale
        if maximize:
            grad = -grad
        if weight_decay != 0:
            if decoupled:
                p.mul_(1 - lr * weight_decay)  # param.mul_(1 - lr * weight_decay)
            elif torch_kernels:
                grad = grad.add(p, alpha=weight_decay)
            else:
                grad = grad + p * weight_decay  # grad.add(param, alpha=weight_decay)
        if torch_kernels:
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        else:
            exp_avg = _lerp(exp_avg, grad, 1 - beta1)  # exp_avg.lerp_(grad, 1 - beta1)
            # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2); addcmul computes
            # self + value * t1 * t2, left to right
            exp_avg_sq = exp_avg_sq * beta2 + (grad * (1 - beta2)) * grad
        second = exp_avg_sq
        if amsgrad:
            max_sq = max_exp_avg_sqs[i].to(cd, copy=True)
            torch.maximum(max_sq, exp_avg_sq, out=max_sq)
            max_exp_avg_sqs[i].copy_(max_sq)
            second = max_sq
        if torch_kernels or division_form:
            denom = (_sqrt(second) / bias_correction2_sqrt).add_(eps)  # exp_avg_sq.sqrt() / ...
        else:
            # the kernel multiplies by the reciprocal, computed in double and rounded once: 1 /
            # sqrt(bc2) with a correctly rounded sqrt, not torch's pow(bc2, 0.5), which glibc does
            # not always round correctly (tolerances.py, DIVISION_FORM_DENOM_ULPS)
            denom = (_sqrt(second) * (1.0 / math.sqrt(bias_correction2))).add_(eps)
        if torch_kernels:
            update = None
            p.addcdiv_(exp_avg, denom, value=-step_size)
        else:
            # param.addcdiv_(exp_avg, denom, value=-step_size): self + value * t1 / t2
            update = (exp_avg * -step_size) / denom
            p = p + update
        if trace is not None:
            trace.setdefault("denom", {})[i] = denom
            trace.setdefault("update", {})[i] = update

        # round once on store
        param.copy_(p)
        exp_avgs[i].copy_(exp_avg)
        exp_avg_sqs[i].copy_(exp_avg_sq)


def _sqrt(t: Tensor) -> Tensor:
    """Correctly rounded sqrt. torch's CPU sqrt is not: measured on torch 2.14, about 20% of
    float32 and 1.4% of float64 results differ by an ulp from IEEE sqrt (numpy's, the CPU's
    sqrtps/sqrtpd), which the kernels use. Used by the oracle too (it is only more accurate)."""
    return torch.from_numpy(np.sqrt(t.contiguous().numpy()))


def _lerp(start: Tensor, end: Tensor, weight: float) -> Tensor:
    """torch.lerp's two formulas, one rounding per op (see the module docstring)."""
    w = torch.tensor(weight, dtype=start.dtype)  # torch computes with the weight in opmath
    if abs(float(w)) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (1 - w)


# op name -> reference with the op's signature (+ compute_dtype)
REFERENCES: dict[str, Callable[..., None]] = {
    "adam": adam_reference,
}
