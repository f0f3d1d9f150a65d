"""pyoptim.Adagrad: torch.optim.Adagrad with a fused native step for dense gradients.

The class subclasses torch.optim.Adagrad, so the constructor, its defaults and error messages,
param groups, hooks, LR schedulers and state_dict handling are torch's own. State is torch's,
created by torch's constructor for every param (and, as torch does, on the first step for params
added later, from the optimizer's default `initial_accumulator_value`): `step` (a 0-dim float32
tensor; on the param's device with fused=True) and `sum`; state_dicts load both ways.

Dense gradients: one call to `torch.ops.pyoptim.adagrad_` per device covers every param group;
the math mirrors torch's single-tensor Adagrad expression by expression
(csrc/include/pyoptim/math/adagrad.h). Complex params step as their real views, as torch's do.
Flags: `foreach` is accepted and validated as torch validates it; the step is always pyoptim's.
`fused=True` is validated as torch validates it, and raises torch's errors where torch's fused
step does (a param that is not floating point, a complex param); GradScaler's `grad_scale` /
`found_inf` are taken by the kernel whatever the flag. `differentiable=True` falls back to
torch's implementation.

Sparse gradients (COO, from nn.Embedding(sparse=True) / nn.EmbeddingBag(sparse=True)): stepped
natively by `torch.ops.pyoptim.sparse_adagrad_`, in the same step as the dense ones (one call of
each op per device, every call checked before anything is written), with torch's sparse
semantics: the gradient's duplicates summed (in pyoptim's fixed order, Note [Blocked duplicate
sums]), then on the touched elements only `sum += g * g`, `param -= clr * g / (sqrt(sum) + eps)`
(Note [Sparse Adagrad] in csrc/include/pyoptim/math/adagrad.h); a grad with no entries changes
nothing but the step count. float32 / float64 results equal torch's bit for bit where torch's
sqrt is IEEE's and its coalesce() sums a row's duplicates in position order
(tests/reference_sparse_adam.py's ieee_torch_mode); bfloat16 / float16 params are
computed in float32 and rounded once. A step in which a sparse grad meets what the native op
does not take is torch's own step, for every param of every group, so it gives torch's results
and raises torch's errors: weight_decay != 0 (torch's error), fused=True (torch's error), a
complex param, a grad of another dtype, shape or device than its param, and GradScaler's
grad_scale / found_inf. The errors torch raises in the middle of such a step (weight_decay with
a sparse grad, fused=True with a sparse grad or a complex param, GradScaler's attributes
reaching a non-fused group, a grad of another shape or device, or of a dtype its param cannot
hold) are raised before it starts, so such a failed step changes nothing (torch's own may have
stepped some params); a tensor that torch's ops refuse for a reason not checked here raises
where torch raises it. Under GradScaler, that step does what GradScaler does for
torch.optim.Adagrad: with fused=False it unscales the grads in place and skips the step on
inf/NaN; with fused=True torch's step gets the scale.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _device_dtype_check_for_fused

from ._dense import DenseStep, _SparseGrad
from ._state import (
    DeviceCall,
    Plan,
    hyper_args,
    scalar_dtype,
    scalar_type_name,
    to_param_dtype,
)

__all__ = ["Adagrad"]

_FUSED_SPARSE_OR_COMPLEX = "`fused` does not support sparse grad or complex param"
_sparse_adagrad_ = torch.ops.pyoptim.sparse_adagrad_.default


class Adagrad(DenseStep, torch.optim.Adagrad):
    __doc__ = (
        "Drop-in torch.optim.Adagrad with a fused native step (see pyoptim.adagrad).\n\n"
        + (torch.optim.Adagrad.__doc__ or "")
    )

    _op = torch.ops.pyoptim.adagrad_.default
    _states = ("sum",)
    _sparse_msg = None  # torch steps sparse grads: sparse_adagrad_, or _sparse_step
    _sparse_state_keys = ("step", "sum")
    _param_dtype_keys = ("sum",)  # Note [State in another dtype] in _state.py

    def _hyper(self, group: dict) -> tuple:
        return group["lr"], group["lr_decay"], group["weight_decay"], group["eps"]

    def _flags(self, group: dict) -> tuple:
        return (group["maximize"],)

    def _init_state(self, group: dict, p: Tensor, state: dict) -> None:
        if group["fused"]:
            state["step"] = torch.zeros((), dtype=scalar_dtype(True), device=p.device)
        else:
            state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        init = self.defaults["initial_accumulator_value"]  # torch reads the defaults here
        state["sum"] = torch.full_like(p, complex(init, init) if p.is_complex() else init,
                                       memory_format=torch.preserve_format)

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if group["fused"] and not p.grad.is_sparse:
            if getattr(self, "_need_device_dtype_check_for_fused", True):
                _check_fused(plan, p)  # torch checks the first param with a grad, once
                self._need_device_dtype_check_for_fused = False
            if len(self.state[p]) == 0:
                _check_fused(plan, p)  # and each param whose state it creates
            error = _fused_error([p])
            if error is not None:  # raised by _run, before anything is written; the complex
                # check comes before the kernel's dtype dispatch
                plan.keep_fused_error(group, int(isinstance(error, NotImplementedError)), error)
        has_state = super()._init_param(plan, group, p)
        to_param_dtype(self.state[p], "sum", p, plan.keep)  # Note [State in another dtype]
        return has_state

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        if plan.fused_errors:
            k, error = plan.first_fused_error()
            # Note [Fused-flag errors] (adam.py): torch created the state of the groups up to
            # the failing one before raising
            made = {id(p) for g in plan.groups[:k + 1] for p in g["params"]}
            plan.fresh = [p for p in plan.fresh if id(p) not in made]
            raise error
        if not plan.sparse_index:
            return super()._run(plan, call, params, grads, states, grad_scale, found_inf,
                                validate_only)
        try:
            super()._run(plan, call, params, grads, states, grad_scale, found_inf, validate_only)
        except Exception as e:  # checked before any write (every call is validated first)
            raise _SparseGrad from e  # with sparse grads: torch's step, as the docstring says

    # Note [Sparse params in a dense step] (_state.py): sparse grads go to sparse_adagrad_,
    # in the same step as the dense ones; what it does not take makes the whole step torch's
    # (`_SparseGrad`, raised before anything is written; see the module docstring)
    def _sparse_ok(self, group: dict) -> bool:
        return True

    def _init_sparse(self, plan: Plan, group: dict, p: Tensor) -> None:
        g = p.grad
        if (group["fused"] or group["weight_decay"] != 0 or p.is_complex()
                or g.dtype != p.dtype or g.shape != p.shape or g.device != p.device):
            raise _SparseGrad  # torch's step raises, or steps what the op does not take
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization, as torch's
            plan.fresh.append(p)  # removed again if the step raises
            self._init_state(group, p, state)

    def _run_sparse(self, plan: Plan, call: DeviceCall, grads: list[Tensor],
                    states: list[list[Any]], grad_scale: Tensor | None,
                    found_inf: Tensor | None, validate_only: bool) -> None:
        if grad_scale is not None or found_inf is not None:
            raise _SparseGrad  # GradScaler: torch's path (see the module docstring)
        steps, sums = states
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        _sparse_adagrad_(call.params, grads, sums, steps, call.group_sizes, hyper, flags,
                         lr_tensors, validate_only)

    def _sparse_step(self) -> None:
        """A step with a sparse grad: torch's own step, after the checks that would make it
        raise halfway, and after what GradScaler does for torch.optim.Adagrad."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        amp = grad_scale is not None or found_inf is not None
        amp_to_torch = amp and bool(self.defaults["fused"])  # torch's fused step takes them
        self._check_sparse_step(amp_to_torch)
        if amp and not amp_to_torch:
            # GradScaler unscales torch.optim.Adagrad(fused=False)'s grads itself, in place
            # (GradScaler._unscale_grads_), and skips the step on inf/NaN
            if found_inf is not None and float(found_inf) != 0.0:
                return
            if grad_scale is not None:
                _unscale_grads(self.param_groups, grad_scale)
        fresh = [(p, p in self.state) for g in self.param_groups for p in g["params"]
                 if p.grad is not None and not self.state.get(p)]  # torch makes their state
        hidden = {} if amp_to_torch else {k: self.__dict__.pop(k) for k in
                                          ("grad_scale", "found_inf") if k in self.__dict__}
        try:
            self._torch_step()
        except BaseException:  # what is left unchecked: torch's ops refusing a tensor
            for p, had_dict in fresh:
                if had_dict:
                    self.state[p].clear()
                else:
                    self.state.pop(p, None)
            raise
        finally:
            self.__dict__.update(hidden)

    def _check_sparse_step(self, amp_to_torch: bool) -> None:
        """The errors torch's Adagrad step raises after it has begun writing, in its order."""
        need_check = getattr(self, "_need_device_dtype_check_for_fused", True)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["fused"]:
                for p in params:  # torch's _init_group
                    if need_check or len(self.state.get(p, ())) == 0:
                        _device_dtype_check_for_fused(p)
                        need_check = False
                error = _fused_error(params)
                if error is not None:
                    raise error
            elif amp_to_torch:
                raise AssertionError("Expected grad_scale and found_inf to be None")
            elif group["weight_decay"] != 0 and any(p.grad.is_sparse for p in params):
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")
            for p in params:  # what torch's in-place ops refuse
                g = p.grad
                if (g.shape != p.shape or g.device != p.device
                        or not torch.can_cast(torch.promote_types(p.dtype, g.dtype), p.dtype)):
                    raise RuntimeError(
                        f"pyoptim.Adagrad: the grad of a {p.dtype} param of shape "
                        f"{tuple(p.shape)} on {p.device} is a {g.dtype} tensor of shape "
                        f"{tuple(g.shape)} on {g.device}")


def _check_fused(plan: Plan, p: Tensor) -> None:
    try:
        _device_dtype_check_for_fused(p)
    except RuntimeError:
        plan.fresh = []  # Note [Fused-flag errors] (adam.py): torch's state stays
        raise


def _fused_error(params: list[Tensor]) -> Exception | None:
    """What torch's fused Adagrad raises for these params of one group (with grads)."""
    if any(p.grad.is_sparse or p.is_complex() for p in params):
        return RuntimeError(_FUSED_SPARSE_OR_COMPLEX)
    for p in params:
        if not p.is_floating_point():
            return NotImplementedError(
                f'"fused_adagrad_kernel" not implemented for {scalar_type_name(p.dtype)!r}')
    return None


def _unscale_grads(groups: list[dict], grad_scale: Tensor) -> None:
    """GradScaler._unscale_grads_ (unscale_ does not allow float16 grads)."""
    per_device: dict[tuple, list[Tensor]] = defaultdict(list)
    for group in groups:
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.dtype == torch.float16:
                raise ValueError("Attempting to unscale FP16 gradients.")
            t = g._values() if g.is_sparse else g
            per_device[t.device, t.dtype].append(t)
    inv_scale = grad_scale.double().reciprocal().float()
    for (device, _), grads in per_device.items():
        found = torch.zeros(1, dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv_scale.to(device))
