"""The `step` frame shared by pyoptim's optimizers, and the plan it reuses from step to step.

A step makes one op call per device over every param group (Note [Param groups in one call] in
csrc/ops/groups.h): per-group hyper-parameters as lists, the tensors of all groups in one list
each. Building those lists the way torch.optim does (`optimizer.state[p]` per param) costs a
Python-level `Tensor.__hash__` per parameter, which with thousands of small parameters is
slower than the fused update itself. So the optimizer keeps a Plan: which params step, in which
call, and the state dict of each. Every step re-reads each gradient and each state tensor from
those dicts (C-level loops), so in-place edits, a new tensor assigned to a key and a cleared
dict are all seen, and the Plan is reused while all of these hold:

  * `param_groups` holds the same group dicts, with the same param objects in the same order;
  * the same params have a gradient (None-pattern of `p.grad` unchanged);
  * `optimizer.state` is the same object, with the same number of entries, and the state dict of
    every param is still the dict the Plan holds (`optimizer.state[p] = {}` replaces it);
  * the per-group flags that change the state layout (amsgrad, momentum != 0, ...) are unchanged;
  * every state dict still has the keys the step reads (a cleared dict is initialized again,
    as torch.optim does).

Otherwise the Plan is rebuilt, creating lazy state exactly as torch.optim does. State created
by a step that then raises is removed again, so a failed step leaves the optimizer as it was.
Under torch.compile no Plan is kept: the lists are built afresh in each traced step.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from itertools import chain, compress, repeat
from typing import Any

import torch
from torch import Tensor

_grad_of = operator.attrgetter("grad")
_params_of = operator.itemgetter("params")


def scalar_dtype(is_fused: bool | None = None) -> torch.dtype:
    """torch.optim.optimizer._get_scalar_dtype: the dtype of `step` tensors."""
    if is_fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def real_view(t: Tensor) -> Tensor:
    """Complex tensors go to the ops as real views (torch.optim does the same)."""
    return torch.view_as_real(t) if t.is_complex() else t


def on_device(t: Tensor | None, device: torch.device) -> Tensor | None:
    """GradScaler's grad_scale / found_inf on the device of the params (torch moves them too)."""
    if t is None or t.device == device:
        return t
    return t.to(device)


def columns(getter: Callable[[dict], tuple], groups: list[dict]) -> list[tuple]:
    """The ops' per-group hyper-parameter lists: `getter` (an itemgetter of several keys) applied
    to every group, transposed: one tuple per key, one entry per group."""
    return list(zip(*map(getter, groups)))


def lr_args(lrs: tuple, device: torch.device) -> tuple[tuple, Sequence[Tensor | None]]:
    """The ops' `lr` and `lr_tensors` arguments from the groups' lrs: a Tensor lr travels as a
    tensor (read on the device where the op can, with no host sync), its entry in `lr` unused."""
    if not any(map(isinstance, lrs, repeat(Tensor))):
        return lrs, ()
    tensors = [(x if x.device.type == "cpu" else on_device(x, device)).detach()
               if isinstance(x, Tensor) else None for x in lrs]
    return tuple(0.0 if isinstance(x, Tensor) else x for x in lrs), tensors


def pick(items: Sequence[Any], index: list[int] | None) -> list:
    """[items[i] for i in index] as a list, in C (index None: all of them)."""
    if index is None:
        return items if isinstance(items, list) else list(items)
    if not index:
        return []
    got = operator.itemgetter(*index)(items)
    return [got] if len(index) == 1 else list(got)


class DeviceCall:
    """One op call of a step: the active params on one device, group by group."""

    def __init__(self, device: torch.device, n_groups: int) -> None:
        self.device = device
        self.index: list[int] = []  # positions among the step's active params
        self.state_index: list[int] = []  # positions among the active params that have state
        self.group_sizes = [0] * n_groups
        self.group_of: list[int] = []  # group of each param of the call
        self.params: list[Tensor] = []  # real views of complex params: refreshed every step
        self.complex_pos: list[int] = []  # positions in this call of complex params
        self.complex_state_pos: list[int] = []  # and in its state lists


class Plan:
    """Which params a step updates, in which op call, with which state dicts."""

    def __init__(self, opt: torch.optim.Optimizer, params: list[Tensor], mask: list[bool],
                 layout: Any) -> None:
        self.groups = list(opt.param_groups)
        self.params = params
        self.mask = mask
        self.layout = layout
        self.state_obj = opt.state
        self.state_len = -1
        self.active: list[Tensor] = list(compress(params, mask))
        self.group_of: list[int] = []  # group of each active param
        self.has_state: list[bool] = []  # per active param: does the op read its state
        self.dicts: list[dict] = []  # state dict of each active param that has state
        self.dict_pos: list[int] = []  # where each of them sits in state.values()
        self.fresh: list[Tensor] = []  # params whose state this build created
        self.calls: list[DeviceCall] = []
        self.extra: Any = None  # what a subclass keeps with the plan

    def finish(self, opt: torch.optim.Optimizer) -> None:
        """After lazy state creation: record the dicts and split the params by device."""
        n_groups = len(self.groups)
        by_device: dict[torch.device, DeviceCall] = {}
        s = 0
        for k, (p, g, has) in enumerate(zip(self.active, self.group_of, self.has_state)):
            call = by_device.get(p.device)
            if call is None:
                call = by_device[p.device] = DeviceCall(p.device, n_groups)
            if p.is_complex():
                call.complex_pos.append(len(call.params))
                if has:
                    call.complex_state_pos.append(len(call.state_index))
            call.index.append(k)
            call.params.append(real_view(p))
            call.group_sizes[g] += 1
            call.group_of.append(g)
            if has:
                call.state_index.append(s)
                s += 1
        self.calls = list(by_device.values())
        state = opt.state
        self.dicts = [state[p] for p in compress(self.active, self.has_state)]
        if self.dicts:
            positions = {id(d): k for k, d in enumerate(state.values())}
            self.dict_pos = [positions[id(d)] for d in self.dicts]
        self.state_len = len(state)

    def valid(self, opt: torch.optim.Optimizer, params: list[Tensor], mask: list[bool],
              layout: Any) -> bool:
        groups = opt.param_groups
        if not (
            opt.state is self.state_obj
            and len(opt.state) == self.state_len
            and layout == self.layout
            and len(groups) == len(self.groups)
            and all(map(operator.is_, groups, self.groups))
            and len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and mask == self.mask
        ):
            return False
        if not self.dicts:
            return True
        values = list(opt.state.values())
        return all(map(operator.is_, pick(values, self.dict_pos), self.dicts))

    def state_lists(self, keys: Sequence[str],
                    optional: Sequence[str] = ()) -> list[list[Any]] | None:
        """Each key's value in the state dict of every param with state (None where an optional
        key is missing); None if a dict is missing a required key."""
        try:
            lists = [list(map(operator.itemgetter(key), self.dicts)) for key in keys]
        except KeyError:
            return None
        return lists + [list(map(dict.get, self.dicts, repeat(key))) for key in optional]

    def real_views(self, call: DeviceCall, grads: list[Tensor],
                   states: list[list[Any]]) -> tuple[list[Tensor], list[Tensor], list[list[Any]]]:
        """The call's params, grads and state tensors with every complex one as a fresh real
        view (a view made in an earlier step would miss a later `p.data = ...`)."""
        if not call.complex_pos:
            return call.params, grads, states
        params, grads, states = list(call.params), list(grads), [list(s) for s in states]
        for k in call.complex_pos:
            params[k] = real_view(self.active[call.index[k]])
            grads[k] = real_view(grads[k])
        for k in call.complex_state_pos:
            for s in states:
                if isinstance(s[k], Tensor):
                    s[k] = real_view(s[k])
        return params, grads, states

    def split(self, items: list, by_state: bool = False) -> list[list]:
        """A list over the active params (or over those with state), split like the calls."""
        if len(self.calls) == 1 and (not by_state or len(self.dicts) == len(self.active)):
            return [items]
        return [pick(items, c.state_index if by_state else c.index) for c in self.calls]


class FusedStep:
    """The `step` frame shared by pyoptim's optimizers (first in their MRO, before the torch
    class): torch's fallback for differentiable=True, the closure, GradScaler's attributes, the
    Plan, and the op calls of the step, all-or-nothing (Note [All-or-nothing step] in
    csrc/ops/groups.h). A subclass says what its state is and makes its op call:

      _layout(groups)         what, in the groups, changes which state the op reads
      _state_keys(plan)       the state keys the op reads, in order: required ones (a dict
                              without one is initialized again) and optional ones (None where
                              absent)
      _init_param(group, p)   torch's checks and lazy state initialization for one param with a
                              grad; returns whether the op reads its state (and True when it
                              created state: it is removed again if the step raises)
      _run(plan, call, params, grads, states, grad_scale, found_inf, validate_only)
                              one op call (complex tensors already real views)
      _commit(plan, found_inf)  what to store once every call has succeeded
    """

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf to step()
    def _layout(self, groups: list[dict]) -> Any:
        return None

    def _state_keys(self, plan: Plan) -> tuple[Sequence[str], Sequence[str]]:
        return (), ()

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        raise NotImplementedError

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        raise NotImplementedError

    def _commit(self, plan: Plan, found_inf: Tensor | None) -> None:
        pass

    def _build_plan(self, params: list[Tensor], mask: list[bool], layout: Any) -> Plan:
        plan = Plan(self, params, mask, layout)
        try:
            k = 0
            for g, group in enumerate(self.param_groups):
                for p in group["params"]:
                    if mask[k]:
                        plan.has_state.append(self._init_param(plan, group, p))
                        plan.group_of.append(g)
                    k += 1
            plan.finish(self)
        except BaseException:
            self._forget_fresh(plan)
            raise
        return plan

    def _forget_fresh(self, plan: Plan) -> None:
        for p in plan.fresh:
            self.state.pop(p, None)
        plan.fresh = []
        self.__dict__.pop("_pyoptim_plan", None)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("_pyoptim_plan", None)
        return state

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        groups = self.param_groups
        for group in groups:
            if group.get("differentiable", False):
                return super().step(closure)  # type: ignore[misc]  # torch's own, differentiable
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # as torch.no_grad(), at a fraction of the cost
        try:
            self._fused_step(groups)
        finally:
            torch._C._set_grad_enabled(grad_mode)
        return loss

    def _fused_step(self, groups: list[dict]) -> None:
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        params = list(chain.from_iterable(map(_params_of, groups)))
        grads = list(map(_grad_of, params))
        mask = list(map(operator.is_not, grads, repeat(None)))
        layout = self._layout(groups)
        compiling = torch.compiler.is_compiling()
        plan = None if compiling else self.__dict__.get("_pyoptim_plan")
        if plan is None or not plan.valid(self, params, mask, layout):
            plan = self._build_plan(params, mask, layout)
        keys, optional = self._state_keys(plan)
        states = plan.state_lists(keys, optional) if plan.dicts else []
        if states is None:  # a state dict lost a key (cleared): initialize it again, as torch does
            plan = self._build_plan(params, mask, layout)
            states = plan.state_lists(keys, optional) if plan.dicts else []
        if not compiling:
            self.__dict__["_pyoptim_plan"] = plan
        try:
            grads = list(compress(grads, mask))
            calls = plan.calls
            if len(calls) == 1 and not calls[0].complex_pos and (
                    not states or len(plan.dicts) == len(plan.active)):
                self._run(plan, calls[0], calls[0].params, grads, states, grad_scale, found_inf,
                          False)
            else:
                grads_per_call = plan.split(grads)
                states_per_call = [plan.split(s, by_state=True) for s in states]
                runs = [(call, *plan.real_views(call, grads_per_call[k],
                                                [s[k] for s in states_per_call]))
                        for k, call in enumerate(calls)]
                if len(runs) > 1:  # Note [All-or-nothing step]: every call's checks first
                    for run in runs:
                        self._run(plan, *run, grad_scale, found_inf, True)
                for run in runs:
                    self._run(plan, *run, grad_scale, found_inf, False)
            self._commit(plan, found_inf)
        except BaseException:
            self._forget_fresh(plan)
            raise
        plan.fresh = []
