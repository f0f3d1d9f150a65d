"""The step of a dense optimizer (Note [Dense optimizers] in csrc/include/pyoptim/dense.h): an
elementwise optimizer with a fixed set of state tensors, whose op the generic C++ machinery
provides. A subclass (first in the MRO, before its torch.optim class) says

  _op                     its op, torch.ops.pyoptim.<name>.default
  _states                 its state keys, in the op's order (torch's keys)
  _has_step               whether it keeps a `step` tensor per param (the op counts it)
  _hyper(group), _flags(group)  as FusedStep's
  _init_state(group, p, state)  torch's lazy state initialization (and its checks)
  _sparse_msg             torch's error for a sparse gradient, or None where the torch class
                          steps sparse gradients: a step in which any param has one is then
                          `_sparse_step()`'s, decided before anything is written (the op
                          refuses sparse gradients, and a dense step costs no extra check)
                          A subclass with a sparse op steps them natively instead (FusedStep's
                          `_sparse_ok` / `_init_sparse` / `_run_sparse`: Note [Sparse params in
                          a dense step]) and raises `_SparseGrad` (before anything is written)
                          for a step it leaves to `_sparse_step()`
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from ._state import DeviceCall, FusedStep, Plan, hyper_args, on_device, torch_takes_conj_grad


class _SparseGrad(Exception):
    """A param has a sparse gradient and `_sparse_msg` is None: the step is `_sparse_step()`'s
    (raised by the plan's build, or by a subclass's `_init_sparse` / `_run_sparse`)."""


class DenseStep(FusedStep):
    _op: Callable[..., None]
    _states: tuple[str, ...] = ()
    _has_step = True
    _sparse_msg: str | None = "This optimizer does not support sparse gradients"
    _grads_read_by_op = True  # Note [Grads read by the op] in csrc/ops/checks.h

    def _sparse_step(self) -> None:
        raise NotImplementedError

    def _init_state(self, group: dict, p: Tensor, state: dict) -> None:
        raise NotImplementedError

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (("step",) if self._has_step else ()) + self._states, ()

    def _resolve_conj(self, group: dict) -> bool:
        # Adamax's and Adagrad's weight decay is L2: grad.add(param, alpha=weight_decay)
        return torch_takes_conj_grad(group, group["weight_decay"] != 0)

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if p.grad.is_sparse:  # a group whose sparse grads are not _sparse_ok
            if self._sparse_msg is None:
                raise _SparseGrad
            raise RuntimeError(self._sparse_msg)
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization, as torch's
            plan.fresh.append(p)  # removed again if the step raises
            self._init_state(group, p, state)
        return True

    def _fused_step(self, groups: list[dict]) -> None:
        if self._sparse_msg is not None or torch.compiler.is_compiling():
            return super()._fused_step(groups)
        try:  # a sparse grad makes the plan's build or the op raise, before any write
            return super()._fused_step(groups)
        except Exception as e:
            if not isinstance(e, _SparseGrad) and not any(
                    p.grad is not None and p.grad.is_sparse and not self._sparse_ok(g)
                    for g in groups for p in g["params"]):
                raise  # the ops' own errors stand
        return self._sparse_step()

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
