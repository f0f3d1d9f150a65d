"""pyoptim.RowWiseAdagrad: Adagrad with one accumulator per row, for embedding tables.

FBGEMM's EXACT_ROWWISE_ADAGRAD (the optimizer of its table-batched embeddings), as a
torch.optim.Optimizer: param groups, hooks, LR schedulers and state_dict handling are torch's own.
Each step makes one call to `torch.ops.pyoptim.rowwise_adagrad_` per device, covering every param
group. A param's rows are its first dim (an nn.Embedding weight: one row per embedding; a 1-D
param: one row per element); for each row the step touches (every row for a dense grad, the rows
present in a sparse COO grad, its duplicates summed in a fixed order), with g the row's
gradient, w the row, D its width and clr = lr / (1 + (step - 1) * lr_decay):

    g      = -g                                              (maximize)
    h      = g + weight_decay * w   (weight_decay_mode "l2", the default)   else h = g
    sum    = sum + mean(h * h)                               (over the row)
    mult   = clr / (sqrt(sum) + eps)
    w      = (1 - mult * weight_decay) * w - mult * g        ("l2")
    w      = (1 - clr * weight_decay) * w - mult * g         ("decoupled")
    w      = w - mult * g                                    (weight_decay = 0)

(Note [Row-wise Adagrad] in csrc/include/pyoptim/math/rowwise_adagrad.h; FBGEMM's formula and
roundings, with torch.optim.Adagrad's lr_decay, initial_accumulator_value and maximize added.)
Rows absent from a sparse grad are left alone: no decay, no accumulator change. The row mean is
summed in a fixed lane order (Note [Row sum lanes]), so every CPU level, thread count and the GPU
give the same bits.

State per param: `step` (a 0-dim float32 tensor, as torch.optim.Adagrad's) and `sum`, one
accumulator per row (shape [rows]): float32 for float32, bfloat16 and float16 params (FBGEMM keeps
its row-wise momentum in float32 whatever the table's dtype: a 16-bit accumulator would stop
growing once g_avg falls below its half-ulp), float64 for float64 params. The update is computed
in float32 (float64 for float64 params) and each param element rounded once. Complex params are
not supported (TypeError). GradScaler unscales the grads before step(), as for torch's
non-fused optimizers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._state import (
    DeviceCall,
    FusedStep,
    Plan,
    _dtensor_type,
    hyper_args,
    load_then,
    saved_states,
    scalar_dtype,
)

__all__ = ["RowWiseAdagrad"]

_rowwise_adagrad_ = torch.ops.pyoptim.rowwise_adagrad_.default
_MODES = ("l2", "decoupled")


def _check_mode(mode: Any) -> None:
    if mode not in _MODES:
        raise ValueError(f"Invalid weight_decay_mode: {mode!r}; expected 'l2' or 'decoupled'")


class RowWiseAdagrad(FusedStep, torch.optim.Optimizer):
    """Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): one accumulator per row.

    Args:
        params (iterable): iterable of parameters or named_parameters to optimize or iterable
            of dicts defining parameter groups. Rows are the first dim of each param.
        lr (float, Tensor, optional): learning rate (default: 1e-2)
        lr_decay (float, optional): learning rate decay, as torch.optim.Adagrad's (default: 0)
        weight_decay (float, optional): weight decay (default: 0)
        eps (float, optional): added to sqrt(sum) (default: 1e-10)
        initial_accumulator_value (float, optional): initial value of each row's sum
            (default: 0)
        weight_decay_mode (str, optional): "l2" (FBGEMM's L2: the decay joins the gradient in
            the row's mean square and in the update) or "decoupled" (FBGEMM's DECOUPLE:
            w *= 1 - lr * weight_decay on the touched rows) (default: "l2")
        maximize (bool, optional): maximize the objective instead of minimizing
            (default: False)

    See pyoptim.rowwise_adagrad for the formula.
    """

    _step_supports_amp_scaling = False  # GradScaler unscales the grads itself
    _traceable = False  # sparse grads: eager under torch.compile

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        *,
        weight_decay_mode: str = "l2",
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        _check_mode(weight_decay_mode)
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                        initial_accumulator_value=initial_accumulator_value,
                        weight_decay_mode=weight_decay_mode, maximize=maximize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _check_mode(param_group.get("weight_decay_mode", self.defaults["weight_decay_mode"]))
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """As torch.optim.Adagrad's: a `step` that is not a tensor (a hand-made or converted
        checkpoint) becomes the 0-dim tensor the op reads, when loaded."""
        super().__setstate__(state)
        for group in self.param_groups:
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "step" in p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=scalar_dtype())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, with the `sum` of a bfloat16 or float16 param taken as saved
        in float32 (a copy, on the param's device): torch casts every floating state tensor but
        `step` to its param's dtype, which would round the accumulator to 16 bits. (It reads the
        state dict torch loads, as the load_state_dict pre-hooks made it: load_then.)"""
        load_then(self, super().load_state_dict, state_dict, self._take_saved)

    def _take_saved(self, state_dict: dict[str, Any]) -> None:
        for p, _, saved in saved_states(self, state_dict):
            value = saved.get("sum")
            if p.dtype in (torch.bfloat16, torch.float16) and isinstance(value, Tensor):
                self.state[p]["sum"] = value.to(p.device, torch.float32, copy=True)

    def _hyper(self, group: dict) -> tuple:
        return group["lr"], group["lr_decay"], group["weight_decay"], group["eps"]

    def _flags(self, group: dict) -> tuple:
        return bool(group["maximize"]), group["weight_decay_mode"] == "decoupled"

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("step", "sum"), ()

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if p.is_complex():
            raise TypeError("RowWiseAdagrad does not support complex parameters")
        dtensor = _dtensor_type()
        if dtensor is not None and isinstance(p, dtensor):  # before any state is made
            raise TypeError("RowWiseAdagrad does not support DTensor params yet (FSDP2, tensor "
                            "parallel): its `sum` holds one value per row of the param, not a "
                            "DTensor laid out as the param")
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization
            plan.fresh.append(p)  # removed again if the step raises
            state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
            rows = p.shape[0] if p.dim() > 0 else 1
            dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            state["sum"] = torch.full((rows,), group["initial_accumulator_value"], dtype=dtype,
                                      device=p.device)
        return True

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        steps, sums = states
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        _rowwise_adagrad_(params, grads, sums, steps, call.group_sizes, hyper, flags,
                          lr_tensors, validate_only)
