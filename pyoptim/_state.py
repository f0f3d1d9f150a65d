"""The `step` frame shared by pyoptim's optimizers, and the plan it reuses from step to step.

A step makes one op call per device over every param group (Note [Param groups in one call] in
csrc/ops/groups.h): every group's hyper-parameters packed into two lists, the tensors of all
groups in one list each. Building those lists the way torch.optim does (`optimizer.state[p]`
per param) costs a Python-level `Tensor.__hash__` per parameter, which with thousands of small
parameters is slower than the fused update itself. So the optimizer keeps a Plan: which params
step, in which call, and the state dict of each. Every step re-reads each gradient and each
state tensor from those dicts (C-level loops), so in-place edits, a new tensor assigned to a key
and a cleared dict are all seen, and the Plan is reused while all of these hold:

  * `param_groups` holds the same group dicts, with the same param objects in the same order;
  * the same params have a gradient (None-pattern of `p.grad` unchanged);
  * `optimizer.state` is the same object, with the same number of entries, and the state dict of
    every param is still the dict the Plan holds (`optimizer.state[p] = {}` replaces it);
  * the per-group flags that change the state layout (amsgrad, momentum != 0, ...) are unchanged;
  * every state dict still has the keys the step reads (a cleared dict is initialized again,
    as torch.optim does).

Otherwise the Plan is rebuilt, creating lazy state exactly as torch.optim does. State created
by a step that then raises is removed again, and a state dict the build converted (a mode
switched on or off, a loaded checkpoint in another format: pyoptim/_mixed.py) gets its items
back, so a failed step leaves the optimizer as it was.
Under torch.compile no Plan is kept: see Note [Compiled step] in pyoptim/_compiled.py.

DTensor params (FSDP2's `fully_shard`, tensor parallel): the op runs on the local shards, one
call per device as for plain tensors (Note [DTensor params] below). The Plan records which
positions of a call hold DTensors, never their local tensors: those are read again in every step.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, compress, repeat
from typing import Any

import torch
from torch import Tensor
from torch.nn import Parameter
from torch.optim.optimizer import (
    _default_to_fused_or_foreach,
    _get_capturable_supported_devices,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
)

_grad_of = operator.attrgetter("grad")
_params_of = operator.itemgetter("params")
_local_of = operator.attrgetter("_local_tensor")  # DTensor's local shard (its to_local())
_spec_of = operator.attrgetter("_spec")  # DTensor's mesh, placements and global shape

# Note [DTensor params]
# A DTensor param (FSDP2's fully_shard, tensor parallel) is stepped on its local shard. The op
# needs no sharding strategy: an element-wise update of shards laid out as their param (same
# mesh, placements and global shape) is the update of the global tensor. Right before the op
# call, every DTensor param, grad and state tensor is replaced by its `_local_tensor` (what
# to_local() returns, without the autograd view to_local() makes of a Parameter). The Plan keeps
# the positions of the DTensors in each call (DeviceCall.dt_pos), so a step over plain tensors
# pays nothing for them. Each grad and each state tensor (but _PLAIN_KEYS below) of a DTensor
# param must be a DTensor laid out as its param, and not Partial (a grad not yet reduced: FSDP2
# and DDP reduce grads before step()). That is checked where it may have changed, so that a
# step of 1000 FSDP2 params reads what it must and little more (_local_shards): the params'
# local shards in every step (FSDP2 gives a param a new one in reset_sharded_param; a param
# object is the Plan's, with its spec), the grads' specs (one list compare against the last
# step's: FSDP2's grads carry their param's own spec object) and shards; a state value's spec
# and shard where it is not the DTensor found last (DeviceCall.dt_states: the optimizer's own
# tensors, replaced by load_state_dict or by assigning a state key, never changed in place).
# State is created by torch.zeros_like(param), a DTensor like the param, as torch.optim creates
# it, so get/set_optimizer_state_dict and torch.distributed.checkpoint see torch's state. Step
# counts are plain tensors, as in torch (a DTensor count is stepped on its local value). An
# empty local shard is a zero-element tensor, which the ops accept. A DTensor param is on the
# device of its local shard (the CPU with FSDP2's CPUOffloadPolicy): one call per device.
# The state keys that are not shaped like the param: plain tensors for a DTensor param too (the
# step count, as torch makes it; the seed of the mixed-precision modes, _mixed.SEED_KEY).
_PLAIN_KEYS = ("step", "sr_seed")


# Note [Reading grads]
# `p.grad` on a Tensor subclass (a DTensor param: FSDP2) first asks whether the subclass
# overrides __torch_function__ (a lookup on its type), at twice the cost of the read itself:
# 0.22 ms for 1000 DTensor params, 0.08 ms with torch function off. Where no param's type
# has a __torch_function__ of its own (Tensor; Parameter and DTensor carry torch's disabled
# one), turning it off changes nothing but that cost, so the grads are read with it off. A
# param of any other subclass keeps torch's getter (its __torch_function__ may answer `grad`
# itself).
_QUIET_TYPES: dict[type, bool] = {Tensor: True, Parameter: True}


def _quiet(t: type) -> bool:
    """Whether `p.grad` for a param of type `t` reaches no __torch_function__."""
    quiet = _QUIET_TYPES.get(t)
    if quiet is None:
        quiet = _QUIET_TYPES[t] = (
            getattr(t, "__torch_function__", None) is torch._C._disabled_torch_function_impl)
    return quiet


def _grads(params: list[Tensor]) -> list[Tensor | None]:
    """Each param's grad (Note [Reading grads])."""
    if all(map(_quiet, set(map(type, params)))):
        with torch._C.DisableTorchFunctionSubclass():
            return list(map(_grad_of, params))
    return list(map(_grad_of, params))


def _dtensor_type() -> type | None:
    """DTensor's class, or None while torch.distributed.tensor is not imported (then no DTensor
    exists, and importing it here would cost every plain step its import time)."""
    mod = sys.modules.get("torch.distributed.tensor._api")
    return getattr(mod, "DTensor", None)


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


def lr_args(lrs: tuple, device: torch.device) -> tuple[tuple, Sequence[Tensor | None]]:
    """The ops' `lr` and `lr_tensors` arguments from the groups' lrs: a Tensor lr travels as a
    tensor (read on the device where the op can, with no host sync), its entry in `lr` unused."""
    if not any(map(isinstance, lrs, repeat(Tensor))):
        return lrs, ()
    tensors = [_lr_tensor(x, device) if isinstance(x, Tensor) else None for x in lrs]
    return tuple(0.0 if isinstance(x, Tensor) else x for x in lrs), tensors


def _lr_tensor(x: Tensor, device: torch.device) -> Tensor:
    """A Tensor lr as the ops take it: on the CPU or the params' device, floating point. An
    integer (or bool) lr is its value in the default dtype, as torch's arithmetic promotes it
    (`lr / bias_correction`, `param.add_(grad, alpha=lr)`)."""
    t = x if x.device.type == "cpu" else on_device(x, device)
    if not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.get_default_dtype())
    return t.detach()


# c10::ScalarType names, as torch's kernels spell a dtype in "not implemented for" errors
_SCALAR_TYPE_NAMES = {
    torch.complex32: "ComplexHalf", torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble", torch.bool: "Bool", torch.uint8: "Byte",
    torch.int8: "Char", torch.int16: "Short", torch.int32: "Int", torch.int64: "Long",
    torch.uint16: "UInt16", torch.uint32: "UInt32", torch.uint64: "UInt64",
}


def zeros_state(p: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A new zero state tensor shaped as `p`, in `dtype` (default: p's): laid out as p, as torch
    makes its state (preserve_format), but 8-bit codes (int8, uint8), which are row-major as
    their 256-element blocks are (Note [Reduced-precision optimizer states])."""
    codes = dtype in (torch.int8, torch.uint8)
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format if codes
                            else torch.preserve_format)


def to_param_dtype(state: dict, key: str, p: Tensor, keep: Callable[[Tensor, dict], None],
                   ) -> None:
    """Note [State in another dtype]: state[key] in p's dtype, as load_state_dict casts it,
    where it is a dense floating-point tensor of another dtype and p's grad has p's dtype.
    keep(p, state) first (Plan.keep: put back if the step raises)."""
    t = state.get(key)
    if (isinstance(t, Tensor) and t.dtype != p.dtype and p.grad is not None
            and p.grad.dtype == p.dtype and not t.is_sparse
            and (t.is_floating_point() or t.is_complex())):
        keep(p, state)
        state[key] = t.to(p.dtype)


# Note [State in another dtype]
# After model.double() / model.bfloat16() between steps, or a state tensor assigned in another
# dtype, torch's SGD and Adagrad keep training with the state in its own dtype (their for-loop's
# in-place ops on mixed dtypes), while its Adam and Adamax raise. pyoptim's ops take state in the
# param's dtype: SGD (momentum_buffer, groups without a mixed-precision mode or with Kahan's;
# Kahan's kahan_comp) and Adagrad (sum) convert such a tensor to the param's dtype when the Plan
# is built, as load_state_dict would (so the state takes the param's dtype where torch's keeps
# its own). A Plan still valid when the op refuses a state dtype is rebuilt once
# (FusedStep._param_dtype_keys).


def torch_foreach(group: dict, tensor_lr: bool = False) -> bool:
    """Whether torch's step of `group` takes its foreach path (else its for-loop; `fused` is the
    caller's). `foreach` not set (nor `fused`) defaults as torch's _default_to_fused_or_foreach
    decides over the params with a grad (foreach on CUDA, the for-loop on the CPU);
    `tensor_lr`: torch.optim.Adam, which keeps the for-loop for a Tensor lr without
    capturable."""
    foreach = group.get("foreach")
    if foreach is None and group.get("fused") is None:
        params = [p for p in group["params"] if p.grad is not None]
        _, foreach = _default_to_fused_or_foreach(params, False, use_fused=False)
        if foreach and tensor_lr and isinstance(group["lr"], Tensor) and \
                not group.get("capturable", False):
            foreach = False
    return bool(foreach)


def torch_takes_conj_grad(group: dict, l2_decay: bool, tensor_lr: bool = False) -> bool:
    """Whether torch's step of `group` (Adam, Adamax, Adagrad) takes a complex grad with the
    conjugation bit: its for-loop (single-tensor) step views the grad as real after `-grad`
    (maximize) or `grad.add(param, alpha=weight_decay)` (`l2_decay`), new tensors without the
    bit; otherwise, and in its foreach step, view_as_real raises (torch_foreach)."""
    if not (group["maximize"] or l2_decay):
        return False
    return not torch_foreach(group, tensor_lr)


def check_capturable(group: dict, p: Tensor, step: Tensor) -> None:
    """torch's check of `capturable=True` in its for-loop and foreach steps (Adam, AdamW,
    Adamax; its fused step makes none): the param and its step count on one device type that
    can capture, else torch's AssertionError, whose list of those types lacks "xla" in the
    foreach step (torch_foreach)."""
    devices = _get_capturable_supported_devices()
    kind = p.device.type
    if kind == step.device.type and kind in devices and kind != "xla":
        return
    devices = _get_capturable_supported_devices(supports_xla=not torch_foreach(group))
    if not (kind == step.device.type and kind in devices):
        raise AssertionError(
            f"If capturable=True, params and state_steps must be on supported devices: {devices}.")


def scalar_type_name(dtype: torch.dtype) -> str:
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def hyper_args(opt: Any, groups: list[dict], device: torch.device,
               hyper_of: Callable[[dict], tuple] | None = None,
               flags_of: Callable[[dict], tuple] | None = None,
               ) -> tuple[Sequence[Any], Sequence[bool], Sequence[Any]]:
    """The ops' `hyper`, `flags` and `lr_tensors` arguments (Note [Param groups in one call] in
    csrc/ops/groups.h): each group's `opt._hyper(group)` (lr first) and `opt._flags(group)`
    (or `hyper_of` / `flags_of`: another op's), group after group; a Tensor lr travels in
    lr_tensors (see lr_args)."""
    hyper_of = hyper_of or opt._hyper
    flags_of = flags_of or opt._flags
    if len(groups) == 1:
        hyper = hyper_of(groups[0])
        if not isinstance(hyper[0], Tensor):
            return hyper, flags_of(groups[0]), ()
    rows = list(map(hyper_of, groups))
    lrs, lr_tensors = lr_args(tuple(r[0] for r in rows), device)
    return ([x for lr, r in zip(lrs, rows) for x in (lr, *r[1:])],
            [f for group in groups for f in flags_of(group)], lr_tensors)


def hyper_type_error(opt: Any, groups: list[dict]) -> TypeError | None:
    """After an op call raised RuntimeError: a TypeError for the first hyper-parameter of
    `groups` that is a str or None where the constructor's default is a number (or a tuple of
    numbers, as betas), which the ops' `float[]` argument refuses with a RuntimeError about
    their schema, where torch's step raises TypeError for it. torch validates the constructor's
    defaults, not a param group's own values (a group given as a dict or added later: a
    config's "1e-3" read as a string). Called only once a step has failed, so a good step pays
    nothing."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float, Tensor)) and not isinstance(x, bool)

    for k, group in enumerate(groups):
        for key, default in opt.defaults.items():
            if not (number(default) or isinstance(default, tuple) and all(map(number, default))):
                continue
            value = group.get(key)
            for v in value if isinstance(value, tuple) else (value,):
                if v is None or isinstance(v, (str, bytes)):
                    return TypeError(
                        f"param_groups[{k}][{key!r}] holds {v!r} ({type(v).__name__}): a "
                        "hyper-parameter must be a number (or a Tensor where torch takes one)")
    return None


def load_then(opt: Any, load: Callable[[dict], None], state_dict: dict[str, Any],
              then: Callable[[dict], None]) -> None:
    """load(state_dict) (torch's load_state_dict), which calls then(loaded) where `loaded` is the
    state dict torch loads: the one the optimizer's load_state_dict pre-hooks made (they may
    return another, e.g. one matching the params by name, as torch's docs show), with `then`
    run before the post-hooks. A class re-takes from it what torch's cast would change
    (saved_states), so that hooks see and adapt that state as they do torch's."""
    loaded: list[dict] = []

    def record(_: Any, sd: dict) -> None:  # the last pre-hook: sees the dict torch loads
        loaded.append(sd)

    pre = opt.register_load_state_dict_pre_hook(record)
    post = opt.register_load_state_dict_post_hook(lambda _: then(loaded[-1]), prepend=True)
    try:
        load(state_dict)
    finally:
        pre.remove()
        post.remove()


def saved_states(opt: Any, state_dict: dict[str, Any]) -> Iterator[tuple[Tensor, dict, dict]]:
    """(param, its group, its saved state) for every param with state in `state_dict`, once
    `opt` has loaded it: torch's load_state_dict casts every floating state tensor but `step` to
    its param's dtype, and a class re-takes from `saved` the keys it keeps in another dtype
    (inside the load: load_then)."""
    saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
    params = [(p, g) for g in opt.param_groups for p in g["params"]]
    for pid, (p, group) in zip(saved_ids, params):
        saved = state_dict["state"].get(pid)
        if saved:
            yield p, group, saved


def pick(items: Sequence[Any], index: list[int] | None) -> list:
    """[items[i] for i in index] as a list, in C (index None: all of them)."""
    if index is None:
        return items if isinstance(items, list) else list(items)
    if not index:
        return []
    got = operator.itemgetter(*index)(items)
    return [got] if len(index) == 1 else list(got)


# Optional state keys: an op reads some state keys only for the params of the groups that have
# them (amsgrad's max_exp_avg_sq, a master, a seed, ...). A class lists them as `table`, pairs
# (state key, index in a group's _layout entry of the flag saying whether its params have it).

def optional_keys(plan: Any, table: Sequence[tuple[str, int]]) -> tuple[str, ...]:
    """The keys of `table` that some group of the plan has, in order (_state_keys' optional
    keys)."""
    return tuple(key for key, k in table if any(layout[k] for layout in plan.layout))


def optional_lists(plan: Any, table: Sequence[tuple[str, int]], values: Sequence[list],
                   owners: Callable[[], Sequence[int]]) -> list[list | None]:
    """Per key of `table`, the op's list: the values of the params of the groups that have the
    key, in order, or None where no group has it. `values` are the plan's state lists of
    optional_keys (one per present key, one value per param with state); owners() gives each
    such param's group, asked for only when some groups have a key and others do not."""
    out: list[list | None] = []
    present = iter(values)
    groups_of = None
    for _, k in table:
        on = [layout[k] for layout in plan.layout]
        if not any(on):
            out.append(None)
            continue
        got = next(present)
        if all(on):
            out.append(got)
            continue
        if groups_of is None:
            groups_of = owners()
        out.append([v for v, g in zip(got, groups_of) if on[g]])
    return out


# Note [Held state]
# torch.ops converts each tensor of a list argument into the op's argument stack, which the
# dispatcher drops without the GIL. A tensor whose only C++ reference is its Python object
# (optimizer state: the state dict holds it) hands ownership back to Python when that second
# reference goes: a GIL round trip per tensor, ~0.07 us on top of the 0.04 us conversion
# (1000 tensors in an empty op: 115 us vs 42 us with another C++ reference alive). Grads have
# one (the param's autograd metadata). The Plan keeps a view of each state tensor it found (of
# a DTensor's local shard, which is what the op gets; Plan.held), which is such a reference: a
# 1000-param Adam step, 1.35 -> 1.0 ms. A tensor assigned to a state key later is stepped as
# well, only without the view until the Plan is rebuilt; so is a state tensor first found by
# a rebuild right after a Plan that served a single step (Plan.finish). Params get none:
# torch.utils.swap_tensors (module.to() with swapping, FSDP2) needs a param's TensorImpl to have
# no other reference. A DTensor param's local shard does (DeviceCall.dt_param_locals): what is
# swapped is the DTensor, and where FSDP2 gives a param a new shard (assigning its
# _local_tensor) the step finds it and lets the views of the old shards go, so none is kept
# alive. Grads of DTensor params (new tensors in every step) get none. A traced step (Note
# [Compiled step]) keeps no Plan; the graph hands its op the state tensors as inputs, and the
# optimizer holds views of them from the trace (TRACED_HELD; 200 AdamW params of 64x64, one
# thread: 0.55 -> 0.47 ms a compiled step).


# The optimizer's attribute holding the views of the state tensors the last trace gave its op
# calls (_compiled.init_for_trace).
TRACED_HELD = "_pyoptim_traced_held"


class DeviceCall:
    """One op call of a step: the active params on one device, group by group."""

    def __init__(self, device: torch.device, n_groups: int) -> None:
        self.device = device
        self.index: list[int] = []  # positions among the step's active params
        self.state_index: list[int] = []  # positions among the active params that have state
        self.group_sizes = [0] * n_groups
        self.group_of: list[int] = []  # group of each param of the call
        self.params: list[Tensor] = []  # the params; complex and DTensor ones go to the op
        # as views made afresh in every step (Plan.op_views), at these positions
        self.complex_pos: list[int] = []  # positions in this call of complex params
        self.complex_state_pos: list[int] = []  # and in its state lists
        self.dt_pos: list[int] = []  # Note [DTensor params]: positions of DTensor params
        self.dt_state_pos: list[int] = []  # and in the state lists
        self.dt_state_param: list[int] = []  # the index in dt_pos of each of those
        self.dt_grad_specs: list | None = None  # the grads' specs last found laid out right
        # per state key: the values last found laid out right, and their local shards (None: a
        # plain key's plain values)
        self.dt_states: dict[str, tuple[list[Any], list[Any] | None]] = {}
        # Note [Held state]: the DTensor params' local shards the Plan holds views of (None:
        # none held, or FSDP2 replaced one since: _local_shards lets them go)
        self.dt_param_locals: list[Tensor] | None = None


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
        self.dict_pos: list[int] | None = []  # where each sits in state.values() (None: all)
        self.fresh: list[Tensor] = []  # params whose state this build created
        # the state dicts this build changed otherwise, by id: (param, dict, its items before)
        self.kept: dict[int, tuple[Tensor, dict, dict]] = {}
        self.calls: list[DeviceCall] = []
        self.extra: Any = None  # what a subclass keeps with the plan
        self.held: dict[int, tuple[Tensor, Tensor]] = {}  # Note [Held state]: by id(tensor)
        self.steps = 0  # the steps this Plan has served (see finish)
        # (state, its dicts, their positions by id) when the Plan has dicts (see finish)
        self.positions: tuple[dict, list[dict], dict[int, int]] | None = None
        # Note [Sparse params in a dense step]: the params stepped by _run_sparse
        self.dense_mask = mask  # the params with a grad that go to the dense calls
        self.sparse_index: list[int] = []  # positions in `params` of the sparse ones
        self.sparse_group_of: list[int] = []
        self.sparse_params: list[Tensor] = []
        self.sparse_dicts: list[dict] = []
        self.sparse_dict_pos: list[int] = []
        self.sparse_calls: list[DeviceCall] = []
        # Note [Grads read by the op] (csrc/ops/checks.h): every param has a grad and goes to
        # one CPU call that reads them itself (set by finish)
        self.implicit_grads = False
        # Note [Fused-flag errors] (adam.py): per param group (by id), the (order, error) that
        # torch's fused step raises first for it; _run raises the first group's
        self.fused_errors: dict[int, tuple[int, Exception]] = {}

    def keep(self, p: Tensor, state: dict) -> None:
        """Record the items of `p`'s state dict before this build first changes them: put back
        if the step raises (FusedStep._forget_fresh)."""
        if id(state) not in self.kept:
            self.kept[id(state)] = (p, state, dict(state))

    def keep_fused_error(self, group: dict, order: int, error: Exception) -> None:
        """Keep `error` for `group` unless one torch raises earlier (a lower `order`, or the
        same order found at an earlier param) is kept already."""
        kept = self.fused_errors.get(id(group))
        if kept is None or order < kept[0]:
            self.fused_errors[id(group)] = (order, error)

    def first_fused_error(self) -> tuple[int, Exception]:
        """The index of the first param group with a kept error, and that error."""
        return next((k, self.fused_errors[id(g)][1]) for k, g in enumerate(self.groups)
                    if id(g) in self.fused_errors)

    def add_sparse(self, k: int, g: int, p: Tensor) -> None:
        """The k-th param (of group g) is stepped by _run_sparse, not by the dense calls."""
        self.sparse_index.append(k)
        self.sparse_group_of.append(g)
        self.sparse_params.append(p)

    def finish(self, opt: torch.optim.Optimizer) -> None:
        """After lazy state creation: record the dicts and split the params by device."""
        n_groups = len(self.groups)
        if self.sparse_index:
            self.dense_mask = list(self.mask)
            for k in self.sparse_index:
                self.dense_mask[k] = False
            self.active = list(compress(self.params, self.dense_mask))
            calls: dict[torch.device, DeviceCall] = {}
            for i, (p, g) in enumerate(zip(self.sparse_params, self.sparse_group_of)):
                call = calls.get(p.device)
                if call is None:
                    call = calls[p.device] = DeviceCall(p.device, n_groups)
                call.index.append(i)
                call.params.append(p)
                call.group_sizes[g] += 1
                call.group_of.append(g)
            self.sparse_calls = list(calls.values())
            self.sparse_dicts = [opt.state[p] for p in self.sparse_params]
        by_device: dict[torch.device, DeviceCall] = {}
        dtensor = _dtensor_type()
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
            if dtensor is not None and isinstance(p, dtensor):
                if has:
                    call.dt_state_pos.append(len(call.state_index))
                    call.dt_state_param.append(len(call.dt_pos))
                call.dt_pos.append(len(call.params))
            call.params.append(p)
            call.group_sizes[g] += 1
            call.group_of.append(g)
            if has:
                call.state_index.append(s)
                s += 1
        self.calls = list(by_device.values())
        state = opt.state
        self.dicts = [state[p] for p in compress(self.active, self.has_state)]
        call = self.calls[0] if len(self.calls) == 1 else None
        self.implicit_grads = (
            opt._grads_read_by_op and call is not None and call.device.type == "cpu"
            and not self.sparse_index and not call.complex_pos and not call.dt_pos
            and len(self.active) == len(self.params)
            and len(self.dicts) in (0, len(self.active))
            and all(type(p) is Tensor or type(p) is Parameter for p in self.active))
        last = opt.__dict__.get("_pyoptim_plan")  # the Plan this one replaces, if any
        if self.dicts or self.sparse_dicts:
            # the position of each state dict in the state, kept for the next Plan: a Plan is
            # rebuilt in every step where the set of params with a grad changes (mixture of
            # experts, frozen branches), and comparing the dicts is a fifth of the dict's cost
            values = list(state.values())
            kept = last.positions if last is not None else None
            if kept is not None and kept[0] is state and len(kept[1]) == len(values) and \
                    all(map(operator.is_, values, kept[1])):
                positions = kept[2]
            else:
                positions = {id(d): k for k, d in enumerate(values)}
            self.positions = (state, values, positions)
            self.dict_pos = [positions[id(d)] for d in self.dicts]
            self.sparse_dict_pos = [positions[id(d)] for d in self.sparse_dicts]
            if self.dict_pos == list(range(len(state))):
                self.dict_pos = None  # the state holds these dicts only, in order: no pick
        self.state_len = len(state)
        # Note [Held state]: a view of each state tensor, so the op's stack never drops the
        # last C++ reference to one
        if not torch.compiler.is_compiling():  # a traced step keeps no Plan
            opt.__dict__.pop(TRACED_HELD, None)  # an eager step's Plan holds its own views
            local = [t if type(t) is Tensor else t._local_tensor  # a DTensor's: what the op gets
                     for d in self.dicts for t in d.values()
                     if type(t) is Tensor or (dtensor is not None and type(t) is dtensor)]
            for call in self.calls:  # and the DTensor params' local shards
                if call.dt_pos:
                    call.dt_param_locals = list(map(_local_of, pick(call.params, call.dt_pos)))
                    local += call.dt_param_locals
            # t[...]: an alias view as t.view(t.shape) is, at a quarter of its cost; the view
            # the last Plan made of the same tensor is taken over (a rebuild after
            # add_param_group keeps nearly all): by id, with the tensor kept to compare. A view
            # costs a rebuild ~1.3 us and saves a step ~0.07 us: where the last Plan served a
            # single step (the params with a grad change in every step: a mixture of experts),
            # no new views are made
            earlier = last.held if last is not None else {}
            new_views = last is None or last.steps != 1
            held: dict[int, tuple[Tensor, Tensor]] = {}
            for t in local:
                pair = earlier.get(id(t))
                if pair is not None and pair[0] is t:
                    held[id(t)] = pair
                elif new_views:
                    held[id(t)] = (t, t[...])
            self.held = held
            for call in self.calls:
                if call.dt_param_locals is not None and \
                        not all(id(t) in held for t in call.dt_param_locals):
                    call.dt_param_locals = None  # not held (see new_views)

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
            and (mask is None or mask == self.mask)  # None: implicit_grads (see _fused_step)
        ):
            return False
        if not self.dicts and not self.sparse_dicts:
            return True
        values = list(opt.state.values())
        return all(map(operator.is_, pick(values, self.dict_pos), self.dicts)) and (
            not self.sparse_dicts
            or all(map(operator.is_, pick(values, self.sparse_dict_pos), self.sparse_dicts)))

    def state_lists(self, keys: Sequence[str], optional: Sequence[str] = (),
                    dicts: list[dict] | None = None) -> list[list[Any]] | None:
        """Each key's value in the state dict of every param with state (or in `dicts`; None
        where an optional key is missing); None if a dict is missing a required key."""
        dicts = self.dicts if dicts is None else dicts
        try:
            lists = [list(map(operator.itemgetter(key), dicts)) for key in keys]
        except KeyError:
            return None
        return lists + [list(map(dict.get, dicts, repeat(key))) for key in optional]

    def op_views(self, call: DeviceCall, grads: list[Tensor], states: list[list[Any]],
                 keys: Sequence[str], resolve_conj: Sequence[bool] = (),
                 ) -> tuple[list[Tensor], list[Tensor], list[list[Any]]]:
        """The call's params, grads and state tensors (`keys`: the state key of each list) as
        the op takes them: DTensors as their local shards (Note [DTensor params]) and every
        complex tensor as a fresh real view (a view made in an earlier step would miss a later
        `p.data = ...`). A complex grad with the conjugation bit (autograd's grad of p.conj())
        is resolved first where `resolve_conj` is true for its param group (given per group:
        FusedStep._resolve_conj), else refused by view_as_real, as torch's step does."""
        if not call.complex_pos and not call.dt_pos:
            return call.params, grads, states
        if call.dt_pos:
            params, grads, states = _local_shards(call, grads, states, keys, self.held)
        else:
            params, grads, states = list(call.params), list(grads), [list(s) for s in states]
        for k in call.complex_pos:
            params[k] = real_view(params[k])
            resolve = resolve_conj and resolve_conj[call.group_of[k]]
            grads[k] = real_view(grads[k].resolve_conj() if resolve else grads[k])
        for k in call.complex_state_pos:
            for s in states:
                if isinstance(s[k], Tensor):
                    s[k] = real_view(s[k])
        return params, grads, states

    def like_param(self, call: DeviceCall, k: int, t: Tensor) -> Tensor:
        """A state tensor `t` computed on the local shard of the call's k-th param, as the
        state of that param: a DTensor like it if it is one (Note [DTensor params])."""
        p = call.params[k]
        dtensor = _dtensor_type()
        if dtensor is None or not isinstance(p, dtensor) or isinstance(t, dtensor):
            return t
        return dtensor.from_local(t, p.device_mesh, p.placements, run_check=False,
                                  shape=p.shape, stride=p.stride())

    def split(self, items: list, by_state: bool = False) -> list[list]:
        """A list over the active params (or over those with state), split like the calls."""
        if len(self.calls) == 1 and (not by_state or len(self.dicts) == len(self.active)):
            return [items]
        return [pick(items, c.state_index if by_state else c.index) for c in self.calls]


def _local_shards(call: DeviceCall, grads: list[Tensor], states: list[list[Any]],
                  keys: Sequence[str], held: dict[int, tuple[Tensor, Tensor]],
                  ) -> tuple[list[Tensor], list[Tensor], list[list[Any]]]:
    """Note [DTensor params]: the call's params, grads and state lists (`keys`: the key of each),
    new lists in which each DTensor param, its grad and its state tensors are their local
    shards, once the grads and state tensors are checked to be laid out as their params.
    `held`: the Plan's views (Note [Held state]); those of param shards FSDP2 has replaced
    since the Plan was built are let go."""
    params = list(call.params)
    grads = list(grads)
    states = [list(s) for s in states]
    pos, spos = call.dt_pos, call.dt_state_pos
    every = len(pos) == len(params)  # FSDP2: every param of the call is a DTensor
    every_state = not states or len(spos) == len(states[0])
    dparams = params if every else pick(params, pos)
    dgrads = grads if every else pick(grads, pos)
    # grads: new in every step, checked where a spec object differs from the last step's
    try:
        specs = list(map(_spec_of, dgrads))
    except AttributeError:  # a plain tensor
        specs = None
    if specs is None or specs != call.dt_grad_specs:
        _check_layout("grad", dparams, dgrads)
        call.dt_grad_specs = specs
    # state: checked, and its shards read, where a value is not the one found last (shards
    # None: a plain key whose values are all plain, used as they are)
    local_states = []
    for key, values in zip(keys, states):
        dvalues = values if every_state else pick(values, spos)
        found = call.dt_states.get(key)
        if found is None or len(found[0]) != len(dvalues) or \
                not all(map(operator.is_, dvalues, found[0])):
            if key in _PLAIN_KEYS:  # a plain tensor or number; a DTensor one: its local value
                dtensor = _dtensor_type()
                # the value types first: isinstance with a Tensor class is a metaclass call each
                shards = ([v._local_tensor if isinstance(v, dtensor) else v for v in dvalues]
                          if any(issubclass(t, dtensor) for t in set(map(type, dvalues)))
                          else None)
            else:
                sparams = dparams if len(spos) == len(pos) else pick(dparams, call.dt_state_param)
                _check_layout(f"state[{key!r}]", sparams, dvalues)
                shards = [None if t is None else t._local_tensor for t in dvalues]
            found = call.dt_states[key] = (list(dvalues), shards)
        if found[1] is not None:
            local_states.append((values, found[1]))
    # params: read in every step (FSDP2 may give a param a new shard)
    local = list(map(_local_of, dparams))
    kept = call.dt_param_locals
    if kept is not None and not all(map(operator.is_, local, kept)):
        for t in kept:  # a param's local shard was replaced: keep no view of the old one
            held.pop(id(t), None)
        call.dt_param_locals = None
    _put(params, pos, every, local)
    _put(grads, pos, every, list(map(_local_of, dgrads)))
    for values, shards in local_states:
        _put(values, spos, every_state, shards)
    return params, grads, states


def _put(dst: list, index: list[int], whole: bool, values: list) -> None:
    """dst[index[i]] = values[i] (whole: values replace all of dst)."""
    if whole:
        dst[:] = values
    else:
        for k, v in zip(index, values):
            dst[k] = v


def _check_layout(what: str, params: list[Tensor], others: list[Any]) -> None:
    """Each of `others` (the grads, or the values of one state key) is a DTensor with its param's
    mesh, placements and global shape (None: an optional state key absent)."""
    from torch.distributed.tensor import Partial

    for p, t in zip(params, others):
        if t is None:
            continue
        ps, ts = p._spec, getattr(t, "_spec", None)
        if ts is ps:
            continue
        if ts is None:
            raise TypeError(
                f"pyoptim: the {what} of a DTensor param (global shape {tuple(p.shape)}, "
                f"placements {p.placements}) is a {type(t).__name__}, not a DTensor: it must be "
                "a DTensor with the param's mesh and placements")
        if any(isinstance(pl, Partial) for pl in ts.placements):
            raise ValueError(
                f"pyoptim: the {what} of a DTensor param (global shape {tuple(p.shape)}) has a "
                f"Partial placement {ts.placements}: it must be reduced before step() (FSDP2 "
                "does this; otherwise redistribute it to the param's placements "
                f"{p.placements})")
        if ts.mesh != ps.mesh or ts.placements != ps.placements or t.shape != p.shape:
            raise ValueError(
                f"pyoptim: the {what} of a DTensor param has global shape {tuple(t.shape)}, "
                f"placements {ts.placements} on {ts.mesh}; the param has {tuple(p.shape)}, "
                f"{ps.placements} on {ps.mesh}: they must be the same")


def missing_key(plan: Plan, keys: Sequence[str], sparse_keys: Sequence[str]) -> KeyError:
    """torch's KeyError for a state dict that is not empty but lacks a required key: the first
    such dict's first missing key in torch's order, which reads every key but `step` (in the
    ops' order) before `step`."""
    for dicts, required in ((plan.dicts, keys), (plan.sparse_dicts, sparse_keys)):
        order = [k for k in required if k != "step"] + ["step"] * ("step" in required)
        for state in dicts:
            for key in order:
                if key not in state:
                    return KeyError(key)
    raise AssertionError("pyoptim: no state dict lacks a required key")


class _GradsNeeded(Exception):
    """A Plan rebuilt during a step whose grads the op does not read itself (Note [Grads read by
    the op] in csrc/ops/checks.h): the step runs again with the grads listed."""


# Note [Sparse params in a dense step]
# An optimizer may step the sparse-gradient params of some param groups (`_sparse_ok(group)`)
# with a second op, in the same step (Adam(lazy_sparse=True): Note [Lazy sparse Adam] in
# adam.py). The Plan keeps them apart (Plan.sparse_index, sparse_calls, sparse_dicts; their state
# dicts are checked like the others): the dense calls get the params of `dense_mask` only. Every
# call, dense and sparse, is checked (validate_only) before any writes, so the step stays
# all-or-nothing. Which grads are sparse is not part of the Plan's validity check (that would
# cost every dense step a look at every grad); a grad that turned sparse, or dense, since the
# Plan was built makes its op refuse it before anything is written, and the step then rebuilds
# the Plan and runs again, once.


# Note [Step hooks]
# torch.optim wraps an optimizer class's `step` once (Optimizer._patch_step_function, unless the
# function is marked `hooked`) in Optimizer.profile_hook_step: a profiler range named
# "Optimizer.step#<class>.step" around the step pre-hooks (global, then the optimizer's; one may
# return new (args, kwargs)), the step, `_optimizer_step_code()` (the profiler's Python hook) and
# the post-hooks (the optimizer's, then global). FusedStep.step is that wrapper already, marked
# `hooked`: the same calls in the same order, with the range opened only while a profiler runs
# (torch.profiler, torch.autograd.profiler, emit_nvtx / emit_itt: what reads it), through the
# profiler's direct binding, and not at all when traced by torch.compile (Dynamo drops torch's
# range too). torch's range costs two op calls and slows the op calls inside it: ~7 us per
# step with no profiler running, a third of a whole step on a small param, which the
# optimizer-in-backward recipe pays once per param. What does not see the range: a
# RecordFunction observer that is not a profiler (an ExecutionTraceObserver started on its own).
# A subclass that defines its own `step` is wrapped by torch; its `super().step()` then runs
# without a second round of hooks.
_rf_enter = torch._C._autograd._record_function_with_args_enter
_rf_exit = torch._C._autograd._record_function_with_args_exit
_profiling = torch._C._autograd._profiler_enabled


def _with_step_hooks(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def step(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        if type(self).step is not step:  # called by a subclass's step that torch wrapped
            return func(*args, **kwargs)
        ranged = not torch.compiler.is_compiling() and _profiling()
        if ranged:
            handle = _rf_enter(f"Optimizer.step#{type(self).__name__}.step")
        try:
            if _global_optimizer_pre_hooks or self._optimizer_step_pre_hooks:
                for hook in chain(_global_optimizer_pre_hooks.values(),
                                  self._optimizer_step_pre_hooks.values()):
                    result = hook(self, args, kwargs)
                    if result is not None:
                        if isinstance(result, tuple) and len(result) == 2:
                            args, kwargs = result
                        else:
                            raise RuntimeError(
                                f"{func} must return None or a tuple of (new_args, new_kwargs), "
                                f"but got {result}.")
            out = func(*args, **kwargs)
            self._optimizer_step_code()
            if self._optimizer_step_post_hooks or _global_optimizer_post_hooks:
                for hook in chain(self._optimizer_step_post_hooks.values(),
                                  _global_optimizer_post_hooks.values()):
                    hook(self, args, kwargs)
            return out
        finally:
            if ranged:
                _rf_exit(handle)

    step.hooked = True  # type: ignore[attr-defined]
    return step


class FusedStep:
    """The `step` frame shared by pyoptim's optimizers (first in their MRO, before the torch
    class): torch's fallback for differentiable=True, the closure, GradScaler's attributes, the
    Plan, and the op calls of the step, all-or-nothing (Note [All-or-nothing step] in
    csrc/ops/groups.h). A subclass says what its state is and makes its op call:

      _hyper(group)           the group's hyper-parameters, in the op's order, lr first
      _flags(group)           the group's flags, in the op's order
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

    and, where a param group steps sparse gradients with another op (Note [Sparse params in a
    dense step]):

      _sparse_ok(group)       whether the group's sparse-gradient params go to _run_sparse
      _sparse_state_keys      the state keys _run_sparse reads
      _init_sparse(plan, group, p)  torch's checks and lazy state for one such param
      _run_sparse(plan, call, grads, states, grad_scale, found_inf, validate_only)
                              one op call over a device's sparse-gradient params
    """

    _step_supports_amp_scaling = True  # GradScaler sets self.grad_scale / found_inf for step()
    # Note [Compiled step] (pyoptim/_compiled.py): whether a traced step traces the op calls
    # (else it steps eagerly: a graph break), and the state keys a traced step creates in the
    # graph
    _traceable = True
    # Note [Grads read by the op] (csrc/ops/checks.h): whether the op's CPU kernel reads each
    # param's grad when given an empty grads list
    _grads_read_by_op = False
    # Note [State in another dtype]: the state keys _init_param converts to the param's dtype
    _param_dtype_keys: tuple[str, ...] = ()
    _created_in_graph: tuple[str, ...] = ()
    _torch_step: Callable[..., Any]  # the torch class's step, without torch's step hooks

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep the torch class's own step for differentiable=True. torch wraps a class's step
        with its step-hook caller once an instance exists (Optimizer._patch_step_function); the
        hooks already run around our step, so the torch step is kept unwrapped (a plain
        function: the compiled path traces it like any other)."""
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__:
            if issubclass(base, torch.optim.Optimizer) and not issubclass(base, FusedStep) \
                    and "step" in vars(base):
                step = vars(base)["step"]
                cls._torch_step = step.__wrapped__ if getattr(step, "hooked", False) else step
                return

    def _hyper(self, group: dict) -> tuple:
        raise NotImplementedError

    def _flags(self, group: dict) -> tuple:
        return ()

    def _layout(self, groups: list[dict]) -> Any:
        return None

    def _resolve_conj(self, group: dict) -> bool:
        """Whether a complex param's grad with the conjugation bit (autograd's grad of p.conj())
        steps in `group`, resolved, as torch's step of the group takes it; else it raises
        view_as_real's error, as torch's does (Plan.op_views)."""
        return False

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

    _sparse_state_keys: tuple[str, ...] = ()

    def _sparse_ok(self, group: dict) -> bool:
        return False

    def _init_sparse(self, plan: Plan, group: dict, p: Tensor) -> None:
        raise NotImplementedError

    def _run_sparse(self, plan: Plan, call: DeviceCall, grads: list[Tensor],
                    states: list[list[Any]], grad_scale: Tensor | None,
                    found_inf: Tensor | None, validate_only: bool) -> None:
        raise NotImplementedError

    def _sparse_positions(self, grads: list[Tensor | None]) -> list[int]:
        """Where, among all params, a param of a _sparse_ok group has a sparse grad."""
        out, k = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            if self._sparse_ok(group):
                out += [k + i for i, g in enumerate(grads[k:k + n])
                        if g is not None and g.is_sparse]
            k += n
        return out

    def _build_plan(self, params: list[Tensor], mask: list[bool], layout: Any,
                    earlier: Plan | None = None) -> Plan:
        """A new Plan. `earlier`: a Plan built in the same step, whose created and converted
        state the new one removes or puts back as its own if the step raises."""
        # a group's flags may have changed since the last Plan (a new layout): the mixed-precision
        # classes check them again, as at construction (MixedPrecision._check_group)
        check = getattr(self, "_check_group", None)
        if check is not None:
            for group in self.param_groups:
                check(group)
            layout = self._layout(self.param_groups)  # of the groups as checked (normalized)
        plan = Plan(self, params, mask, layout)
        if earlier is not None:
            plan.fresh = list(earlier.fresh)
            plan.kept = dict(earlier.kept)
        try:
            k = 0
            for g, group in enumerate(self.param_groups):
                sparse_ok = self._sparse_ok(group)
                for p in group["params"]:
                    if mask[k]:
                        if sparse_ok and p.grad.is_sparse:
                            self._init_sparse(plan, group, p)
                            plan.add_sparse(k, g, p)
                        else:
                            plan.has_state.append(self._init_param(plan, group, p))
                            plan.group_of.append(g)
                    k += 1
            plan.finish(self)
        except BaseException:
            self._forget_fresh(plan)
            raise
        return plan

    def _state_dtype_differs(self, plan: Plan) -> bool:
        """Whether a state tensor of _param_dtype_keys is not in its param's dtype."""
        keys = self._param_dtype_keys
        return bool(keys) and any(
            isinstance(t, Tensor) and t.dtype != p.dtype
            for p, state in zip(compress(plan.active, plan.has_state), plan.dicts)
            for t in map(state.get, keys))

    def _forget_fresh(self, plan: Plan) -> None:
        """Undo what building `plan` did to the state: the dicts it converted get their items
        back, the state it created is removed."""
        state_of = self.state
        for p, state, before in plan.kept.values():
            state.clear()
            state.update(before)
            if state_of.get(p) is not state:  # (a dict the build emptied and removed)
                state_of[p] = state
        plan.kept = {}
        for p in plan.fresh:
            state_of.pop(p, None)
        plan.fresh = []
        self.__dict__.pop("_pyoptim_plan", None)

    def _init_group(self, *args: Any, **kwargs: Any) -> Any:
        """Under torch.compile, run eagerly by Dynamo at trace time (Note [Compiled step] in
        pyoptim/_compiled.py). torch's own step (differentiable=True) calls it with a param
        group first: torch's own _init_group."""
        if args and isinstance(args[0], dict):
            return super()._init_group(*args, **kwargs)  # type: ignore[misc]
        from ._compiled import init_for_trace

        return init_for_trace(self, *args)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("_pyoptim_plan", None)
        state.pop(TRACED_HELD, None)
        return state

    @_with_step_hooks
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        groups = self.param_groups
        for group in groups:
            if group.get("differentiable", False):  # torch's own step, differentiable
                prepare = getattr(self, "_prepare_torch_step", None)  # MixedPrecision's
                if prepare is not None:
                    prepare()
                return self._torch_step(closure)
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
        if torch.compiler.is_compiling():  # traced: Note [Compiled step] in pyoptim/_compiled.py
            from ._compiled import compiled_step

            return compiled_step(self, groups)
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        params = list(chain.from_iterable(map(_params_of, groups)))
        layout = self._layout(groups)
        plan = self.__dict__.get("_pyoptim_plan")
        if plan is not None and plan.implicit_grads and plan.valid(self, params, None, layout):
            # Note [Grads read by the op] (csrc/ops/checks.h): the op reads each param's grad.
            # An op refuses before writing anything (a grad gone, turned sparse, of another
            # dtype, ...); the step then runs as below, with the grads, which says what is wrong
            # or steps what the op cannot read on its own (SGD's promoted grads).
            try:
                return self._steps(plan, params, None, plan.mask, layout, grad_scale,
                                   found_inf)
            except Exception:
                plan = None
                implicit_failed = True
        else:
            implicit_failed = False
        grads = _grads(params)
        mask = list(map(operator.is_not, grads, repeat(None)))
        if plan is None or not plan.valid(self, params, mask, layout):
            plan = self._build_plan(params, mask, layout)
        try:
            self._steps(plan, params, grads, mask, layout, grad_scale, found_inf)
        except Exception:
            # Note [Sparse params in a dense step]: a grad that turned sparse (or dense) since
            # the Plan was built made an op refuse it, before anything was written; Note [State
            # in another dtype]: a state tensor the new Plan converts
            if plan.sparse_index == self._sparse_positions(grads) and \
                    not self._state_dtype_differs(plan):
                raise
            self._steps(self._build_plan(params, mask, layout), params, grads, mask, layout,
                        grad_scale, found_inf)
        if implicit_failed:  # what the op could not read on its own: list the grads from now on
            kept = self.__dict__.get("_pyoptim_plan")
            if kept is not None:
                kept.implicit_grads = False

    def _steps(self, plan: Plan, params: list[Tensor], grads: list[Tensor | None] | None,
               mask: list[bool], layout: Any, grad_scale: Tensor | None,
               found_inf: Tensor | None) -> None:
        """The op calls of one step, with `plan` (rebuilt first where a state dict lost a
        key); a failed step leaves no state it created. grads None: the op reads each param's
        grad (Plan.implicit_grads, Note [Grads read by the op] in csrc/ops/checks.h)."""
        keys, optional = self._state_keys(plan)
        states = plan.state_lists(keys, optional) if plan.dicts else []
        sparse_states = (plan.state_lists(self._sparse_state_keys, (), plan.sparse_dicts)
                         if plan.sparse_dicts else [])
        if states is None or sparse_states is None:
            # a state dict lost a key (cleared): initialize it again, as torch does
            plan = self._build_plan(params, mask, layout, plan)
            states = plan.state_lists(keys, optional) if plan.dicts else []
            sparse_states = (plan.state_lists(self._sparse_state_keys, (), plan.sparse_dicts)
                             if plan.sparse_dicts else [])
            if states is None or sparse_states is None:  # a dict that is not empty lacks a key
                self._forget_fresh(plan)
                raise missing_key(plan, keys, self._sparse_state_keys)
        self.__dict__["_pyoptim_plan"] = plan
        if grads is None and not plan.implicit_grads:
            raise _GradsNeeded  # a rebuilt Plan that needs the grads listed: _fused_step's retry
        try:
            dense_grads = [] if grads is None else list(compress(grads, plan.dense_mask))
            calls = plan.calls
            if len(calls) == 1 and not plan.sparse_calls and not calls[0].complex_pos and \
                    not calls[0].dt_pos and (not states or len(plan.dicts) == len(plan.active)):
                self._run(plan, calls[0], calls[0].params, dense_grads, states, grad_scale,
                          found_inf, False)
            else:
                grads_per_call = plan.split(dense_grads)
                states_per_call = [plan.split(s, by_state=True) for s in states]
                state_keys = (*keys, *optional)
                resolve = ([self._resolve_conj(g) for g in plan.groups]
                           if any(c.complex_pos for c in calls) else [])
                runs = [functools.partial(self._run, plan, call, *plan.op_views(
                            call, grads_per_call[k], [s[k] for s in states_per_call],
                            state_keys, resolve), grad_scale, found_inf)
                        for k, call in enumerate(calls)]
                if plan.sparse_calls:
                    sparse_grads = pick(grads, plan.sparse_index)
                    runs += [functools.partial(
                                self._run_sparse, plan, call, pick(sparse_grads, call.index),
                                [pick(s, call.index) for s in sparse_states], grad_scale,
                                found_inf) for call in plan.sparse_calls]
                if len(runs) > 1:  # Note [All-or-nothing step]: every call's checks first
                    for run in runs:
                        run(True)
                for run in runs:
                    run(False)
            self._commit(plan, found_inf)
        except BaseException as e:
            self._forget_fresh(plan)
            if isinstance(e, RuntimeError):  # a value the ops' float lists refuse
                not_a_number = hyper_type_error(self, plan.groups)
                if not_a_number is not None:
                    raise not_a_number from e
            raise
        plan.fresh = []
        plan.kept = {}
        plan.steps += 1
