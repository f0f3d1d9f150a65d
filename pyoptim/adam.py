"""pyoptim.Adam and pyoptim.AdamW: torch.optim.Adam / AdamW with a fused native step.

The classes subclass torch.optim.Adam / torch.optim.AdamW, so the constructor, its defaults and
its error messages, param groups, hooks, LR schedulers and state_dict handling are torch's own.
Only `step` differs: it makes one call to `torch.ops.pyoptim.adam_` per device, covering every
param group, which validates everything, then updates every tensor in one parallel region (and
increments the step counts).

State per param is torch's: `step` (a 0-dim float32 tensor), `exp_avg`, `exp_avg_sq`, and
`max_exp_avg_sq` with amsgrad, so state_dicts load both ways between torch.optim and pyoptim.

Mixed precision (opt-in, per param group; Note [Master weights and stochastic rounding] in
csrc/include/pyoptim/math/stochastic_round.h): `master_weights=True` (bfloat16 / float16
params) keeps `master_param`, a float32 copy of the param, and float32 moments, and stores the
param rounded to nearest from the master; `stochastic_rounding=True` (bfloat16 params, without
master weights) stores the param rounded stochastically, with random bits keyed by
`sr_seed` (an int64 CPU tensor in the state, drawn from torch's generator), the step and the
element index; `kahan_summation=True` (bfloat16 / float16 params) keeps `kahan_comp`, what
rounding the param lost; `state_dtype=` (float32 params) stores the moments in bfloat16 or
8 bits (the class docstring; pyoptim/_mixed.py). All are checked at construction (and in
add_param_group). Checkpoints: see `pyoptim._mixed.MixedPrecision.load_state_dict`.

Flags: `foreach` and `fused` are accepted and validated as torch validates them (with
`fused=True`, params that are not floating point or not on a fused device raise torch's error);
the step is always pyoptim's fused kernel. `differentiable=True` falls back to torch's own
implementation (autograd cannot see through a native kernel). On CUDA, `capturable=True` or
`fused=True` keeps `step` on the param's device (as torch does) and the kernel reads and
increments it there, with a Tensor lr read on the device too, so the step can be captured in a
CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _device_dtype_check_for_fused

from ._mixed import (
    BF16,
    Q8,
    MixedPrecision,
    init_master,
    init_states,
    new_seed,
    refuse_dtensor,
    seeded,
    settle_modes_off,
)
from ._mixed import KAHAN as _KAHAN
from ._mixed import KAHAN_KEY as _KAHAN_KEY
from ._mixed import MASTER as _MASTER
from ._mixed import MASTER_KEY as _MASTER_KEY
from ._mixed import SEED_KEY as _SEED_KEY
from ._mixed import SR as _SR
from ._mixed import STATES as _STATES
from ._state import (
    DeviceCall,
    FusedStep,
    Plan,
    _dtensor_type,
    check_capturable,
    hyper_args,
    on_device,
    optional_keys,
    optional_lists,
    scalar_dtype,
    torch_takes_conj_grad,
    zeros_state,
)

__all__ = ["Adam", "AdamW"]

_SPARSE_MSG = "Adam does not support sparse gradients, please consider SparseAdam instead"
_adam_ = torch.ops.pyoptim.adam_.default
_sparse_adam_ = torch.ops.pyoptim.sparse_adam_.default

# Note [Lazy sparse Adam]
# With lazy_sparse=True (a constructor keyword, or a param group key; default off, so torch's
# "Adam does not support sparse gradients" stays the default), a param whose gradient is sparse
# (nn.Embedding(sparse=True), nn.EmbeddingBag(sparse=True)) is stepped lazily, in the same step
# as the dense params and all-or-nothing with them (Note [Sparse params in a dense step] in
# _state.py): SparseAdam's update (pyoptim.sparse_adam, the sparse_adam_ op) on the rows the
# gradient touches, duplicates summed in pyoptim's fixed order; untouched rows and their moments
# stay as they are. That update is torch.optim.SparseAdam's, not Adam's: eps is added to
# sqrt(exp_avg_sq) before the bias corrections, which fold into the step size. AdamW's weight
# decay is decoupled and applies to the touched rows only (param *= 1 - lr * weight_decay before
# the update, as pyoptim.SparseAdam's weight_decay). Adam's L2 weight decay (grad += wd * param)
# and amsgrad have no lazy form: a sparse grad in such a group raises. State is Adam's (a `step`
# tensor, exp_avg, exp_avg_sq shaped like the param), so state_dicts keep torch's layout; `step`
# counts the steps in which the param had a gradient. With GradScaler, a step whose found_inf is
# set skips the sparse params as it skips the dense ones; scaled sparse grads must be unscaled
# first (scaler.unscale_(optimizer)), which GradScaler does for sparse grads.


class _AdamStep(FusedStep):
    """The fused `step` shared by Adam and AdamW (first in their MRO)."""

    _fp32_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # float32 in master groups
    _mixed_flags = (_MASTER, _SR, _STATES, _KAHAN)
    # the moments' 8-bit form: scale key and quantize_8bit's sqrt_map (Note [Reduced-precision
    # optimizer states])
    _state_maps = {"exp_avg": ("exp_avg_scale", False), "exp_avg_sq": ("exp_avg_sq_scale", True)}
    _grads_read_by_op = True  # Note [Grads read by the op] in csrc/ops/checks.h

    _sparse_state_keys = ("step", "exp_avg", "exp_avg_sq")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # lazy_sparse joins the defaults only when set: torch's param groups otherwise
        default = self.__dict__.get("_default_lazy_sparse", False)
        if default is not False:
            self.defaults.setdefault("lazy_sparse", default)
        value = param_group.get("lazy_sparse", default)
        if not isinstance(value, bool):
            raise ValueError(f"Invalid lazy_sparse value: {value!r} (a bool)")
        super().add_param_group(param_group)  # type: ignore[misc]

    def _hyper(self, group: dict) -> tuple:
        beta1, beta2 = group["betas"]
        return group["lr"], _real(beta1), _real(beta2), group["weight_decay"], group["eps"]

    def _resolve_conj(self, group: dict) -> bool:
        l2 = group["weight_decay"] != 0 and not group["decoupled_weight_decay"]
        return torch_takes_conj_grad(group, l2, tensor_lr=True)

    def _flags(self, group: dict) -> tuple:
        states = group.get(_STATES)
        return (group["amsgrad"], group["maximize"], group["decoupled_weight_decay"],
                group.get(_MASTER, False), group.get(_SR, False), states == BF16, states == Q8,
                group.get(_KAHAN, False))

    def _layout(self, groups: list[dict]) -> Any:
        # per group: which optional keys its params have (see _OPTIONAL), then the state format,
        # lazy_sparse (which sparse grads go to _run_sparse, not read by _run) and whether
        # _init_param makes torch's capturable check (torch checks in every step)
        return [(g["amsgrad"], g.get(_MASTER, False), seeded(g), g.get(_STATES) == Q8,
                 g.get(_KAHAN, False), g.get(_STATES), g.get("lazy_sparse", False),
                 g["capturable"] and not g["fused"])
                for g in groups]

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # optional keys: only the params of the groups that need them have them
        return ("step", "exp_avg", "exp_avg_sq"), optional_keys(plan, _OPTIONAL)

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if p.grad.is_sparse:
            raise RuntimeError(_SPARSE_MSG)
        refuse_dtensor(group, p)
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization, as torch.optim.Adam
            if group["fused"]:
                try:
                    _device_dtype_check_for_fused(p)
                except RuntimeError:
                    plan.fresh = []  # Note [Fused-flag errors]
                    raise
            self._init_state(plan, group, p, state)
        elif group["amsgrad"] and "max_exp_avg_sq" not in state:
            # amsgrad switched on after the state was made: torch's own error
            raise KeyError("max_exp_avg_sq")
        else:
            settle_modes_off(state, group, p, self._state_maps, self._fp32_keys, plan.keep)
        if group.get(_MASTER, False):
            init_master(state, p, self._fp32_keys, plan.keep)
        elif _STATES in group:
            init_states(state, p, group[_STATES], self._state_maps, plan.keep)
        elif group.get(_KAHAN, False) and _KAHAN_KEY not in state:
            plan.keep(p, state)
            state[_KAHAN_KEY] = torch.zeros_like(p, memory_format=torch.preserve_format)
        elif group.get(_SR, False) and _SEED_KEY not in state:
            plan.keep(p, state)
            state[_SEED_KEY] = new_seed(p)  # a seed per param, from torch's generator
        if group["capturable"] and not group["fused"] and not torch.compiler.is_compiling():
            check_capturable(group, p, state["step"])  # before anything is written
        return True

    def _init_state(self, plan: Plan, group: dict, p: Tensor, state: dict) -> None:
        plan.fresh.append(p)  # removed again if the step raises
        if group["capturable"] or group["fused"]:
            step = torch.zeros((), dtype=scalar_dtype(group["fused"]), device=p.device)
        else:
            step = torch.tensor(0.0, dtype=scalar_dtype(), device="cpu")
        state["step"] = step
        # master weights: float32 moments (Note [Master weights and stochastic rounding]);
        # reduced states: Note [Reduced-precision optimizer states]
        states = group.get(_STATES)
        dtype = (torch.float32 if group.get(_MASTER, False) else
                 torch.bfloat16 if states == BF16 else torch.int8 if states == Q8 else None)
        state["exp_avg"] = zeros_state(p, dtype)
        state["exp_avg_sq"] = zeros_state(p, torch.uint8 if states == Q8 else dtype)
        if states == Q8:  # one scale per block of 256 elements (row-major order)
            blocks = -(-p.numel() // 256)
            for scale_key, _ in self._state_maps.values():
                state[scale_key] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_state(p, dtype)

    # Note [Lazy sparse Adam]
    def _sparse_ok(self, group: dict) -> bool:
        return group.get("lazy_sparse", False)

    def _init_sparse(self, plan: Plan, group: dict, p: Tensor) -> None:
        if group["amsgrad"]:
            raise RuntimeError("lazy_sparse: amsgrad does not support sparse gradients")
        for flag in (_MASTER, _SR, _STATES, _KAHAN):
            if group.get(flag, False):
                raise RuntimeError(
                    f"lazy_sparse: {flag}={group[flag]!r} does not support sparse gradients")
        if group["weight_decay"] != 0 and not group["decoupled_weight_decay"]:
            raise RuntimeError(
                "lazy_sparse: Adam's weight_decay (L2) is not compatible with sparse gradients; "
                "AdamW's decoupled weight decay applies to the touched rows")
        if p.is_complex():
            raise RuntimeError("lazy_sparse: sparse gradients of complex params are not supported")
        dtensor = _dtensor_type()
        if dtensor is not None and isinstance(p, dtensor):
            raise TypeError("lazy_sparse: a DTensor param cannot have a sparse gradient")
        state = self.state[p]
        if len(state) == 0:
            self._init_state(plan, group, p, state)

    def _run_sparse(self, plan: Plan, call: DeviceCall, grads: list[Tensor],
                    states: list[list[Any]], grad_scale: Tensor | None,
                    found_inf: Tensor | None, validate_only: bool) -> None:
        if grad_scale is not None:
            raise RuntimeError(
                "lazy_sparse: sparse gradients must be unscaled before step() with GradScaler: "
                "call scaler.unscale_(optimizer) first")
        steps, exp_avgs, exp_avg_sqs = states
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device,
                                              _sparse_hyper, _sparse_flags)
        counts = [_count_before(s, i) for i, s in enumerate(steps)]  # the op checks them
        if not validate_only and _skipped(found_inf):
            validate_only = True  # checked, not applied: GradScaler found inf/NaN
        _sparse_adam_(call.params, grads, exp_avgs, exp_avg_sqs, counts, call.group_sizes,
                      hyper, flags, lr_tensors, validate_only)

    def _commit(self, plan: Plan, found_inf: Tensor | None) -> None:
        if plan.sparse_dicts and not _skipped(found_inf):
            for state in plan.sparse_dicts:
                state["step"] += 1  # in place, as torch.optim.Adam counts

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        steps, exp_avgs, exp_avg_sqs = states[:3]
        max_sqs, masters, seeds, m_scales, v_scales, comps = optional_lists(
            plan, _OPTIONAL, states[3:], lambda: call.group_of)
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        _adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_sqs or [],
            steps,
            call.group_sizes,
            hyper,
            flags,
            lr_tensors,
            grad_scale if grad_scale is None else on_device(grad_scale, call.device),
            found_inf if found_inf is None else on_device(found_inf, call.device),
            validate_only,
            masters,
            seeds,
            m_scales,
            v_scales,
            comps,
        )


# The optional state keys adam_ reads, each with the index in a group's _layout of the flag
# saying whether the group's params have it.
_OPTIONAL = (("max_exp_avg_sq", 0), (_MASTER_KEY, 1), (_SEED_KEY, 2),
             ("exp_avg_scale", 3), ("exp_avg_sq_scale", 3), (_KAHAN_KEY, 4))


# Note [Fused-flag errors]
# With fused=True, torch checks each param as it lazily creates its state (Adam: every param
# without state; SGD: the first param with a grad, once) and raises "`fused=True` requires all the
# params to be floating point Tensors of supported devices" for a param that is not floating
# point (complex included) or not on a fused device (meta). pyoptim raises the same error at the
# same point, and leaves the state torch leaves: the state created for the params before it stays
# (torch's _init_group made it), and the failing param has an empty state dict (torch's
# `self.state[p]` made it). This is the one error after which pyoptim keeps state it created: a
# failed step otherwise leaves no trace. SGD's later params are not checked by torch's
# _init_group: its fused kernel raises for them ('"fused_sgd_kernel" not implemented for
# 'ComplexFloat''), after _init_group has made an empty state dict for every param with momentum
# and before any buffer is stored; pyoptim raises that error, before anything is written, and
# leaves those empty dicts. Where several param groups are stepped, torch has stepped the groups
# before the failing one; pyoptim has stepped none (Note [All-or-nothing step]).


def _real(x: Any) -> float:
    """A beta given as a one-element Tensor (torch allows it) as a float."""
    return float(x) if isinstance(x, Tensor) else x


def _sparse_hyper(group: dict) -> tuple:
    """sparse_adam_'s hyper-parameters for an Adam group (Note [Lazy sparse Adam])."""
    beta1, beta2 = group["betas"]
    wd = group["weight_decay"] if group["decoupled_weight_decay"] else 0.0
    return group["lr"], _real(beta1), _real(beta2), group["eps"], wd


def _sparse_flags(group: dict) -> tuple:
    return (group["maximize"],)


def _count_before(step: Tensor, i: int) -> float:
    """A lazy sparse param's count before this step, as sparse_adam_ takes it (it steps with the
    count + 1, which _commit then stores with torch's `step += 1`): in a count of another dtype
    than float32 / float64, one less than the incremented count as its dtype holds it (a float16
    count stays at 2048); an integer count its dtype cannot count further raises ValueError, as
    the dense ops raise (ops::next_step_count), where `+= 1` would wrap it."""
    if step.dtype in (torch.float32, torch.float64):
        return float(step)
    after = step + 1
    if not step.is_floating_point() and after.item() <= step.item():
        raise ValueError(
            f"pyoptim.sparse_adam_: state_steps[{i}] is {step.item()}, the largest count its "
            f"dtype {step.dtype} holds; it cannot count this step (store the count as float32 "
            "or int64)")
    return float(after) - 1.0


def _skipped(found_inf: Tensor | None) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


_PARAMS = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


_EXTRA_DOC = (
    "Extra keyword-only arguments (off by default: torch's behaviour):\n"
    "    lazy_sparse (bool, optional): step params whose gradient is sparse lazily, with\n"
    "        SparseAdam's update on the touched rows, in the same step as the dense params\n"
    "        (default: False, torch's error for a sparse gradient). See Note [Lazy sparse Adam]\n"
    "        in pyoptim/adam.py.\n"
    "    master_weights (bool, optional): bfloat16 / float16 params keep a float32 master copy\n"
    "        and float32 moments in the state; the param is the master rounded to nearest.\n"
    "    stochastic_rounding (bool, optional): bfloat16 params are stored stochastically\n"
    "        rounded (seeded per param, reproducible). See pyoptim._mixed.\n"
    "    state_dtype (torch.bfloat16, 'bfloat16', '8bit' or None, optional): float32 params\n"
    "        keep exp_avg / exp_avg_sq in bfloat16 (stochastically rounded) or 8 bits with\n"
    "        one float32 scale per 256 elements (default: None, torch's state). See\n"
    "        Note [Reduced-precision optimizer states] in csrc/include/pyoptim/math/quantize.h;\n"
    "        torch_state_dict() exports torch.optim's format.\n"
    "    kahan_summation (bool, optional): bfloat16 / float16 params keep kahan_comp, what\n"
    "        rounding the param lost, and add it back at the next step (Note [Kahan-\n"
    "        compensated 16-bit params] in csrc/include/pyoptim/math/stochastic_round.h).\n\n"
)


class Adam(_AdamStep, MixedPrecision, torch.optim.Adam):
    __doc__ = (
        "Drop-in torch.optim.Adam with a fused native step (see pyoptim.adam).\n\n"
        + _EXTRA_DOC + (torch.optim.Adam.__doc__ or "")
    )

    def __init__(
        self,
        params: _PARAMS,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        lazy_sparse: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
        kahan_summation: bool = False,
    ) -> None:
        self._default_lazy_sparse = lazy_sparse
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=decoupled_weight_decay,
                         master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         state_dtype=state_dtype, kahan_summation=kahan_summation)


class AdamW(_AdamStep, MixedPrecision, torch.optim.AdamW):
    __doc__ = (
        "Drop-in torch.optim.AdamW with a fused native step (see pyoptim.adam).\n\n"
        + _EXTRA_DOC + (torch.optim.AdamW.__doc__ or "")
    )

    def __init__(
        self,
        params: _PARAMS,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        lazy_sparse: bool = False,
        master_weights: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | str | None = None,
        kahan_summation: bool = False,
    ) -> None:
        self._default_lazy_sparse = lazy_sparse
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         foreach=foreach, capturable=capturable, differentiable=differentiable,
                         fused=fused, master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, state_dtype=state_dtype,
                         kahan_summation=kahan_summation)
