"""Per-group tensor lists, built once and reused while nothing they depend on has changed.

Looking up `optimizer.state[p]` costs a Python-level `Tensor.__hash__` per parameter; with
thousands of small parameters that alone is slower than the whole fused update. So each param
group keeps a GroupCache: the lists of params, state tensors and step counts to pass to the op,
split by device. A step only re-reads `p.grad` for every param (C-level loops) and reuses the
lists while all of these hold:

  * the group is the same dict, with the same param objects in the same order;
  * the same params have a gradient (None-pattern of `p.grad` unchanged);
  * `optimizer.state` is the same object with the same number of entries (load_state_dict,
    unpickling and `optimizer.state = ...` all replace it);
  * the flags that change the state layout (amsgrad, momentum, ...) are unchanged.

Otherwise the lists are rebuilt (and lazy state is created) exactly as torch.optim builds them.
State tensors are used in place, so in-place edits (`state[p]["exp_avg"].zero_()`) are seen;
assigning a *new* tensor to an existing key by hand between steps is not. Use load_state_dict.
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from . import _ops


def scalar_dtype(is_fused: Optional[bool] = None) -> torch.dtype:
    """torch.optim.optimizer._get_scalar_dtype: the dtype of `step` tensors."""
    if is_fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


class Chunk:
    """One device's share of a param group: the lists handed to one op call."""

    def __init__(self, device: torch.device, n_state: int) -> None:
        self.device = device
        self.index: list[int] = []  # positions in group["params"]
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.state: list[list[Tensor]] = [[] for _ in range(n_state)]
        self.steps: list[Any] = []
        self.complex_pos: list[int] = []  # positions in this chunk of complex params
        self._param_objs: list[Tensor] = []

    def add(self, i: int, p: Tensor, state: list[Tensor], step: Any) -> None:
        if p.is_complex():
            self.complex_pos.append(len(self.params))
        self.index.append(i)
        self._param_objs.append(p)
        self.params.append(_real(p))
        for lst, t in zip(self.state, state):
            lst.append(_real(t))
        self.steps.append(step)

    def bind(self, grads: list, whole: bool) -> "Chunk":
        """Point the chunk at this step's gradients (and fresh views of complex params)."""
        self.grads = grads if whole else [grads[i] for i in self.index]
        for k in self.complex_pos:
            self.params[k] = torch.view_as_real(self._param_objs[k])
            self.grads[k] = _real(self.grads[k])
        return self


class GroupCache:
    def __init__(self, group: dict, state: Any, grads: list, flags: Any) -> None:
        self.group = group
        self.params = list(group["params"])
        self.state_obj = state
        self.flags = flags
        self.mask = list(map(operator.is_not, grads, repeat(None)))
        self.active = [i for i, has in enumerate(self.mask) if has]
        self._chunks: dict[torch.device, Chunk] = {}
        self.state_len = -1

    def add(self, i: int, p: Tensor, state: list[Tensor], step: Any = None) -> None:
        chunk = self._chunks.get(p.device)
        if chunk is None:
            chunk = self._chunks[p.device] = Chunk(p.device, len(state))
        chunk.add(i, p, state, step)

    def valid(self, group: dict, state: Any, grads: list, flags: Any) -> bool:
        params = group["params"]
        return (
            group is self.group
            and state is self.state_obj
            and len(state) == self.state_len
            and flags == self.flags
            and len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and list(map(operator.is_not, grads, repeat(None))) == self.mask
        )

    def chunks(self, grads: list) -> list[Chunk]:
        if self.state_len < 0:  # first use after building: the lazy state now exists
            self.state_len = len(self.state_obj)
        whole = len(self._chunks) == 1 and all(
            len(c.index) == len(self.params) for c in self._chunks.values()
        )
        return [c.bind(grads, whole) for c in self._chunks.values()]


def on_device(t: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    """GradScaler's grad_scale / found_inf (or a Tensor lr) on the device of the params."""
    if t is None or t.device == device:
        return t
    return t.to(device)


# What a param group's step is: the op calls to make (each a zero-argument callable), and what
# to store once every call of the step has succeeded (or None).
GroupPlan = tuple[list[Callable[[], None]], Optional[Callable[[], None]]]


def run_all_or_nothing(plans: list[GroupPlan]) -> None:
    """Makes the op calls of a whole step, then its commits. One op call is all-or-nothing; with
    several, every call is first made in check-only mode, so an error in any of them is raised
    before any of them writes (Note [Check-only calls] in csrc/ops/checks.h)."""
    calls = [call for group_calls, _ in plans for call in group_calls]
    if len(calls) > 1:
        with _ops.check_only():
            for call in calls:
                call()
    for call in calls:
        call()
    for _, commit in plans:
        if commit is not None:
            commit()


class FusedStep:
    """The `step` frame shared by pyoptim's optimizers (first in their MRO, before the torch
    class): torch's fallback for differentiable=True, the closure, GradScaler's attributes, and
    the gradients of each group; the subclass plans one group's op calls in `_plan_group`, and
    the step runs all of them all-or-nothing (run_all_or_nothing)."""

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf to step()

    def _cached_group(
        self, group: dict, grads: list, flags: Any, build: Callable[[], GroupCache]
    ) -> Any:
        """The group's GroupCache, rebuilt by `build()` when no longer valid (see above)."""
        caches = self.__dict__.setdefault("_pyoptim_caches", {})
        cache = caches.get(id(group))
        if cache is None or not cache.valid(group, self.state, grads, flags):
            cache = build()
            caches[id(group)] = cache
        return cache

    def _plan_group(self, group: dict, grads: list, grad_scale, found_inf) -> GroupPlan:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Optional[Any] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if any(g["differentiable"] for g in self.param_groups):
            return super().step(closure)  # torch's own math, differentiable through autograd

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_scale: Optional[Tensor] = getattr(self, "grad_scale", None)
        found_inf: Optional[Tensor] = getattr(self, "found_inf", None)
        plans = []
        for group in self.param_groups:
            grads = [p.grad for p in group["params"]]
            if any(map(operator.is_not, grads, repeat(None))):
                plans.append(self._plan_group(group, grads, grad_scale, found_inf))
        run_all_or_nothing(plans)
        return loss
