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
element index. Both are checked at construction (and in add_param_group). Checkpoints: see
`pyoptim._mixed.MixedPrecision.load_state_dict`.

Flags: `foreach` and `fused` are accepted and validated as torch validates them (with
`fused=True`, params that are not floating point or not on a fused device raise torch's error);
the step is always pyoptim's fused kernel. `differentiable=True` falls back to torch's own
implementation (autograd cannot see through a native kernel). On CUDA, `capturable=True` or
`fused=True` keeps `step` on the param's device (as torch does) and the kernel reads and
increments it there, with a Tensor lr read on the device too, so the step can be captured in a
CUDA graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _device_dtype_check_for_fused, _get_capturable_supported_devices

from ._mixed import MASTER as _MASTER
from ._mixed import MASTER_KEY as _MASTER_KEY
from ._mixed import SEED_KEY as _SEED_KEY
from ._mixed import SR as _SR
from ._mixed import MixedPrecision, init_master
from ._state import DeviceCall, FusedStep, Plan, hyper_args, on_device, scalar_dtype

__all__ = ["Adam", "AdamW"]

_SPARSE_MSG = "Adam does not support sparse gradients, please consider SparseAdam instead"
_adam_ = torch.ops.pyoptim.adam_.default


class _AdamStep(FusedStep):
    """The fused `step` shared by Adam and AdamW (first in their MRO)."""

    _fp32_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # float32 in master groups

    def _hyper(self, group: dict) -> tuple:
        beta1, beta2 = group["betas"]
        return group["lr"], _real(beta1), _real(beta2), group["weight_decay"], group["eps"]

    def _flags(self, group: dict) -> tuple:
        return (group["amsgrad"], group["maximize"], group["decoupled_weight_decay"],
                group.get(_MASTER, False), group.get(_SR, False))

    def _layout(self, groups: list[dict]) -> Any:
        return [(g["amsgrad"], g.get(_MASTER, False), g.get(_SR, False)) for g in groups]

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        # optional keys: only the params of amsgrad / master_weights / stochastic_rounding groups
        # have them
        optional = tuple(key for k, key in enumerate(("max_exp_avg_sq", _MASTER_KEY, _SEED_KEY))
                         if any(layout[k] for layout in plan.layout))
        return ("step", "exp_avg", "exp_avg_sq"), optional

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if p.grad.is_sparse:
            raise RuntimeError(_SPARSE_MSG)
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization, as torch.optim.Adam
            if group["fused"]:
                try:
                    _device_dtype_check_for_fused(p)
                except RuntimeError:
                    plan.fresh = []  # Note [Fused-flag errors]
                    raise
            plan.fresh.append(p)  # removed again if the step raises
            if group["capturable"] or group["fused"]:
                step = torch.zeros((), dtype=scalar_dtype(group["fused"]), device=p.device)
            else:
                step = torch.tensor(0.0, dtype=scalar_dtype(), device="cpu")
            state["step"] = step
            # master weights: float32 moments (Note [Master weights and stochastic rounding])
            dtype = torch.float32 if group.get(_MASTER, False) else None
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype,
                                                memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype,
                                                   memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, dtype=dtype,
                                                           memory_format=torch.preserve_format)
        elif group["amsgrad"] and "max_exp_avg_sq" not in state:
            # amsgrad switched on after the state was made: torch's own error
            raise KeyError("max_exp_avg_sq")
        if group.get(_MASTER, False):
            init_master(state, p, self._fp32_keys)
        elif group.get(_SR, False) and _SEED_KEY not in state:
            # a seed per param, from torch's generator (torch.manual_seed makes it reproducible)
            state[_SEED_KEY] = torch.randint(2**62, (), dtype=torch.int64)
        if group["capturable"] and not torch.compiler.is_compiling():
            devices = _get_capturable_supported_devices()
            if not (p.device.type == state["step"].device.type and p.device.type in devices):
                raise AssertionError(  # torch's check, before its step writes anything
                    "If capturable=True, params and state_steps must be on supported devices: "
                    f"{devices}.")
        return True

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        steps, exp_avgs, exp_avg_sqs = states[:3]
        # optional lists (see _state_keys): each holds the tensors of the params of the groups
        # that have the key, in order
        optional = iter(states[3:])
        partial = []
        for k in range(3):  # amsgrad, master_weights, stochastic_rounding
            on = [layout[k] for layout in plan.layout]
            if not any(on):
                partial.append([])
                continue
            values = next(optional)
            partial.append(values if all(on) else
                           [v for v, g in zip(values, call.group_of) if on[g]])
        max_sqs, masters, seeds = partial
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        _adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_sqs,
            steps,
            call.group_sizes,
            hyper,
            flags,
            lr_tensors,
            grad_scale if grad_scale is None else on_device(grad_scale, call.device),
            found_inf if found_inf is None else on_device(found_inf, call.device),
            validate_only,
            masters or None,
            seeds or None,
        )


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


class Adam(_AdamStep, MixedPrecision, torch.optim.Adam):
    __doc__ = (
        "Drop-in torch.optim.Adam with a fused native step (see pyoptim.adam).\n\n"
        + (torch.optim.Adam.__doc__ or "")
    )


class AdamW(_AdamStep, MixedPrecision, torch.optim.AdamW):
    __doc__ = (
        "Drop-in torch.optim.AdamW with a fused native step (see pyoptim.adam).\n\n"
        + (torch.optim.AdamW.__doc__ or "")
    )
