"""The step of a dense optimizer (Note [Dense optimizers] in csrc/include/pyoptim/dense.h): an
elementwise optimizer with a fixed set of state tensors, whose op the generic C++ machinery
provides. A subclass (first in the MRO, before its torch.optim class) says

  _op                     its op, torch.ops.pyoptim.<name>.default
  _states                 its state keys, in the op's order (torch's keys)
  _has_step               whether it keeps a `step` tensor per param (the op counts it)
  _hyper(group), _flags(group)  as FusedStep's
  _init_state(group, p, state)  torch's lazy state initialization (and its checks)
  _sparse_msg             torch's error for a sparse gradient
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

from torch import Tensor

from ._state import DeviceCall, FusedStep, Plan, hyper_args, on_device


class DenseStep(FusedStep):
    _op: Callable[..., None]
    _states: tuple[str, ...] = ()
    _has_step = True
    _sparse_msg = "This optimizer does not support sparse gradients"

    def _init_state(self, group: dict, p: Tensor, state: dict) -> None:
        raise NotImplementedError

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (("step",) if self._has_step else ()) + self._states, ()

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if p.grad.is_sparse:
            raise RuntimeError(self._sparse_msg)
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization, as torch's
            plan.fresh.append(p)  # removed again if the step raises
            self._init_state(group, p, state)
        return True

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        steps = states[0] if self._has_step else []
        per_key = states[1:] if self._has_step else states
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        self._op(
            params,
            grads,
            list(chain.from_iterable(per_key)),  # state 0 of every param, then state 1, ...
            steps,
            call.group_sizes,
            hyper,
            flags,
            lr_tensors,
            grad_scale if grad_scale is None else on_device(grad_scale, call.device),
            found_inf if found_inf is None else on_device(found_inf, call.device),
            validate_only,
        )
