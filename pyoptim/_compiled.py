"""The step of pyoptim's optimizers under torch.compile (Note [Compiled step]).

Imported only while Dynamo traces a step: eager steps never load it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._state import TRACED_HELD, DeviceCall, Plan, _dtensor_type, zeros_state

# Note [Compiled step]
# A step traced by Dynamo (torch.compile of a training step, or of opt.step) makes the same op
# calls as an eager step, in the graph, with no graph break: the ops enter it through their Meta
# kernels and Inductor calls them in place. The eager frame cannot be traced as it is: its Plan
# is built from C-level maps (itemgetter, compress) that Dynamo cannot call, and a Plan kept
# across steps would be invisible to Dynamo's guards. So a traced step works in two parts:
#
# 1. Trace time, eagerly. step() calls self._init_group(None, params, grads, *lists) with empty
#    lists (STATE_LISTS of them for the state). Dynamo runs a method of that name eagerly instead of
#    tracing it (its fast path for torch.optim's own _init_group, OptimizerVariable in
#    torch/_dynamo/variables/optimizer.py). init_for_trace builds a Plan the eager way (torch's
#    checks, lazy state created exactly as torch creates it), fills the lists with the active
#    params, their grads and their state values, and returns the Plan's structure as constants: the
#    op calls, which positions each takes, the group sizes (Note [Op calls of a compiled step]).
#    Dynamo gives each tensor of the lists its source (the param in param_groups, its .grad, its
#    state entry) and guards on param_groups and on the keys of the state, so the structure is
#    derived again (a recompile) wherever the eager Plan would be rebuilt.
# 2. Traced: the op calls, made from those lists by the optimizer's own _run.
#
# State that a step creates without reading it (SGD's first momentum buffer, into which the op
# writes buf = grad) cannot be made at trace time: "first step" would be a constant of the graph
# for every later call. Such keys (`_created_in_graph`) are made in the graph (zeros_like the
# param, in the dtype the eager step gives them: float32 with master weights, bfloat16 or int8
# with state_dtype) and stored into the state after the op calls; the new key fails the state
# guard, so the next call recompiles once, now with the buffer as ordinary state (as
# torch.optim.SGD under compile). With GradScaler, storing them depends on found_inf, read on
# the host (a graph break in that first step only).
#
# These step eagerly, through one graph break (a torch.compiler.disable'd eager step):
# optimizers made for what Dynamo cannot hold (SparseAdam: sparse grads, an int step count;
# RowWiseAdagrad: sparse grads, and a dense grad too: `_traceable = False`), a group with a Tensor
# hyper-parameter other than lr (Tensor betas, eps, momentum, ...), complex params
# (the ops take their real views, and the functionalization of a mutable op,
# auto_functionalized_v2, regenerates a view of its base with as_strided, which cannot change the
# dtype: the op would get the complex tensor), DTensor params (Note [DTensor params]), a grad of
# another dtype than its param (SGD steps it with torch's own code, Adam refuses it), a sparse
# grad to Adagrad (its eager step calls sparse_adagrad_, or is torch's own) or to a group of
# Adam(lazy_sparse=True) (Note [Sparse params in a dense step] in _state.py), and a step that
# torch's checks refuse (a sparse grad to Adam, fused=True with a complex param): the eager step
# raises torch's error, with torch's state left (Note [Fused-flag errors] in adam.py).
# The mixed-precision modes (master weights, stochastic rounding, Kahan, bfloat16 and 8-bit
# states; Note [Master weights and stochastic rounding]) trace like the others: their extra state
# (masters, seeds, scales, compensations) is more state lists, made at trace time as eager makes
# it, and a stochastic step's random bits are keyed by the step count or seed the op reads, not
# by anything of the graph.
# differentiable=True runs torch's own step, traced as torch.optim's is.


def init_for_trace(opt: Any, group: None, params: list, grads: list, *lists: list) -> Any:
    """Part 1 of Note [Compiled step]. Returns None where the step must run eagerly."""
    groups = opt.param_groups
    if any(_tensor_hyper(opt, g) for g in groups):
        return None
    all_params = [p for g in groups for p in g["params"]]
    mask = [p.grad is not None for p in all_params]
    layout = opt._layout(groups)
    try:
        plan: Plan = opt._build_plan(all_params, mask, layout)
    except Exception:  # torch's error for the input (a sparse grad, fused=True with a complex
        return None  # param): the eager step raises it, as an eager step does
    keys, optional = opt._state_keys(plan)
    states = plan.state_lists(keys, optional) if plan.dicts else [[] for _ in (*keys, *optional)]
    if states is None:  # a state dict lost a key (cleared): initialize it again, as eager does
        plan = opt._build_plan(all_params, mask, layout, plan)
        states = plan.state_lists(keys, optional)
        if states is None:  # a dict that is not empty lacks a key: the eager step raises
            opt._forget_fresh(plan)
            return None
    dtensor = _dtensor_type()
    if plan.fused_errors or plan.sparse_index or any(c.complex_pos for c in plan.calls) or any(
            p.grad.dtype != p.dtype or (dtensor is not None and isinstance(p, dtensor))
            for p in plan.active):
        opt._forget_fresh(plan)  # the eager step creates it again
        return None
    plan.fresh = []  # kept: the state is torch's, whether the graph runs or not
    plan.kept = {}
    if len(states) > len(lists):
        raise AssertionError(f"pyoptim: {len(states)} state keys, the trace passes {len(lists)}")
    with_state = [k for k, has in enumerate(plan.has_state) if has]
    all_keys = (*keys, *optional)
    created = [k for k in opt._created_in_graph if k in all_keys]  # required or optional
    if created and plan.extra is not None:
        fresh = [i for i, first in enumerate(plan.extra) if first]
        for key in created:
            values = states[all_keys.index(key)]
            for i in fresh:
                values[i] = plan.dicts[i].pop(key).dtype  # made again in the graph
    params.extend(plan.active)
    grads.extend(p.grad for p in plan.active)
    for out, values in zip(lists, states):
        out.extend(values)
    # Note [Held state] in _state.py: a traced step keeps no Plan, so the optimizer holds the
    # views of the state tensors the graph gives the op; the next trace replaces them
    opt.__dict__[TRACED_HELD] = [t[...] for values in states for t in values if type(t) is Tensor]
    return all_keys, _chunks(plan), plan.extra, plan.layout, with_state


def _tensor_hyper(opt: Any, group: dict) -> bool:
    """Whether a hyper-parameter the op takes, other than lr, is a Tensor in the group (betas,
    eps, weight_decay, momentum, ...: torch's steps take them, and the eager step gives the op
    their values; in a trace the op's float lists would get tensors). Adam's betas are read
    raw: its _hyper converts them with float(), which a trace cannot run without a break."""
    values = (*opt._hyper(group)[1:], *group.get("betas", ()))
    return any(isinstance(v, Tensor) for v in values)


# Note [Op calls of a compiled step]
# A traced step calls each device's op in chunks of at most CHUNK params, not once, when there
# are more. Inductor's post-grad pass that rewrites a functionalized op (auto_functionalized_v2)
# flattens the node's whole argument list once per tensor the op mutates (replace_with_graph's
# recompute-tag propagation), so compiling one call over n params costs O(n^2): AdamW, one call
# over 100 params of 64x64 (400 mutated tensors) compiled in 38 s on 2 cores, over 200 params in
# 139 s; in chunks of 64, 200 params took 69 s. But several chunks are all checked first
# (validate_only calls, as several devices are: Note [All-or-nothing step]), a second pass of the
# op's checks: with 200 params in two chunks a compiled step took 0.9 ms longer than with one
# call (3.0 ms). So models of up to CHUNK params per device (most) compile to one call, and only
# larger ones pay the second pass, to compile in linear time.
CHUNK = 256

# The most state lists an op reads: adam_'s three required ones and its six optional ones (amsgrad,
# master weights, seeds, two 8-bit scales, Kahan; adam.py's _OPTIONAL).
STATE_LISTS = 9


def _chunks(plan: Plan) -> list[tuple]:
    """Each device call of the Plan as op calls of at most CHUNK params: (params, state
    positions, the same as a list, group sizes, group of each param), positions as a slice
    where contiguous."""
    out = []
    n_groups = len(plan.groups)
    for c in plan.calls:
        has = [plan.has_state[k] for k in c.index]
        s = 0
        for a in range(0, len(c.index), CHUNK):
            b = min(a + CHUNK, len(c.index))
            n_state = sum(has[a:b])
            sizes = [0] * n_groups
            for g in c.group_of[a:b]:
                sizes[g] += 1
            state_index = c.state_index[s:s + n_state]
            out.append((_as_slice(c.index[a:b]), _as_slice(state_index), state_index, sizes,
                        c.group_of[a:b]))
            s += n_state
    return out


def _as_slice(positions: list[int]) -> slice | list[int]:
    if positions and positions == list(range(positions[0], positions[-1] + 1)):
        return slice(positions[0], positions[-1] + 1)
    return positions


def _select(items: list, positions: slice | list[int]) -> list:
    """Traced: items[positions], a slice or a list of positions."""
    if isinstance(positions, slice):
        return items[positions]
    return [items[k] for k in positions]


class TracedPlan:
    """What an optimizer's _run reads of a Plan, in a traced step."""

    def __init__(self, groups: list[dict], layout: Any, extra: Any) -> None:
        self.groups = groups
        self.layout = layout
        self.extra = extra
        self.fused_errors: dict = {}  # a step with fused-flag errors is not traced (above)
        self.sparse_index: list[int] = []  # nor is a step with sparse params


def _eager_step(opt: Any, groups: list[dict]) -> None:
    opt._fused_step(groups)


_eager = torch.compiler.disable(_eager_step)


def compiled_step(opt: Any, groups: list[dict]) -> None:
    """Part 2 of Note [Compiled step], traced."""
    if not opt._traceable:
        return _eager(opt, groups)
    grad_scale: Tensor | None = getattr(opt, "grad_scale", None)
    found_inf: Tensor | None = getattr(opt, "found_inf", None)
    params: list[Tensor] = []
    grads: list[Tensor] = []
    lists = [[] for _ in range(STATE_LISTS)]
    desc = opt._init_group(None, params, grads, *lists)
    if desc is None:
        return _eager(opt, groups)
    keys, calls, extra, layout, with_state = desc
    states = list(lists[:len(keys)])
    created = []
    for j in range(len(keys)):
        values = states[j]
        for i, v in enumerate(values):
            if isinstance(v, torch.dtype):  # made in the graph, in the state's dtype
                p = params[with_state[i]]
                values[i] = zeros_state(p, v)
                created.append((p, keys[j], values[i]))
    plan = TracedPlan(groups, layout, extra)
    runs = []
    for index, state_sel, state_index, group_sizes, group_of in calls:  # no complex params
        call_params = _select(params, index)
        call = DeviceCall(call_params[0].device, len(groups))
        call.state_index = state_index  # positions in the step's state lists, as _run reads
        call.group_sizes = group_sizes
        call.group_of = group_of
        call.params = call_params
        runs.append((call, call_params, _select(grads, index),
                     [_select(s, state_sel) for s in states]))
    if len(runs) > 1:  # Note [All-or-nothing step]: every call's checks first
        for run in runs:
            opt._run(plan, *run, grad_scale, found_inf, True)
    for run in runs:
        opt._run(plan, *run, grad_scale, found_inf, False)
    if created and (found_inf is None or not bool(found_inf.item())):
        for p, key, t in created:
            opt.state[p][key] = t

