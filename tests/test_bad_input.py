"""Issue 12 regressions: bad or unusual input raises torch's error or gives torch's result.

Every test runs torch.optim side by side on clones (the for-loop implementation, plus torch's
fused one where its spread is the yardstick of tests/tolerances.py), or compares with a bitwise
snapshot taken before the step; none compares pyoptim with itself.

  1. step counts that are negative or fractional (loaded, or set with fill_) raise ValueError
     from the op, for Adam, AdamW, SparseAdam and Adam(lazy_sparse=True), and change nothing;
  2. resetting state (`state[p].clear()`, `state[p] = {}`, a new tensor under a key) is seen by
     the next step, as torch.optim sees it, and state_dict() keeps that param's state;
  3. load_state_dict + step cycles keep no old state alive (no id(group)-keyed caches);
  4. hyper-parameters that do not fit the math type raise torch's overflow error before anything
     is written (float32 / bfloat16), and float64 params step as in torch;
  5. one param in two groups, grad_scale == 0 and a step count that views a param element are
     rejected (ValueError) and change nothing;
  6. what torch steps is stepped: interleaved but disjoint views, int step tensors, grads of
     another dtype (SGD), 0-dim sparse grads (SGD), meta params; views that DO share elements
     are still rejected.
Plus: a step that raises leaves no lazily created state behind, and a step over several param
groups is all-or-nothing (bad input in the last group, nothing in the first changed).

Related tests elsewhere: tests/test_errors.py (constructor errors with torch's type and message,
the op-level checks one by one: shapes, dtypes, devices, list lengths, aliasing, expanded params,
bad hyper-parameters) and tests/test_step_atomic.py (all-or-nothing across groups for sparse
grads, bad indices and overlapping params; validate_only per op).
"""

from __future__ import annotations

import copy
import gc
import itertools
import types
import weakref
from collections.abc import Callable

import op_calls
import pytest
import torch
from helpers import any_changed, bitwise_equal
from tolerances import (
    SPARSE_ADAM_VS_TORCH_MKL,
    few_steps_tol,
    parity_tolerance,
    sgd_tol,
    sgd_unfused_tol,
)
from torch import nn

import pyoptim

ADAMS = ("Adam", "AdamW")
ALL = ("Adam", "AdamW", "SGD", "SparseAdam")
OVERFLOW_MSG = "value cannot be converted to type float without overflow"


# ---- helpers ----------------------------------------------------------------------------------


def _impls(cls: str) -> tuple[str, ...]:
    """pyoptim and torch's for-loop; Adam(W) also torch's fused=True (torch's own spread)."""
    return ("pyoptim", "loop", "fused") if cls in ADAMS else ("pyoptim", "loop")


def _optimizer(impl: str, cls: str, params, **kw) -> torch.optim.Optimizer:
    if impl == "pyoptim":
        return getattr(pyoptim, cls)(params, **kw)
    if cls != "SparseAdam":
        kw = dict(kw, **({"foreach": False} if impl == "loop" else {"fused": True}))
    return getattr(torch.optim, cls)(params, **kw)


def _grad(cls: str, t: torch.Tensor) -> torch.Tensor:
    """Dense, or for SparseAdam a row-sparse COO grad (as nn.Embedding(sparse=True) makes)."""
    return t.to_sparse(1) if cls == "SparseAdam" else t


def _params_of(opt: torch.optim.Optimizer) -> list:
    return [p for g in opt.param_groups for p in g["params"]]


def _set_grads(cls: str, params, gen: torch.Generator) -> None:
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        p.grad = _grad(cls, g)


def _snapshot(opt: torch.optim.Optimizer):
    """Bitwise copy of every param and of every state entry (which params have state too)."""
    params = [p.detach().clone() for p in _params_of(opt)]
    state = [(p, {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                  for k, v in s.items()}) for p, s in opt.state.items()]
    return params, state


def _state_layout(opt: torch.optim.Optimizer) -> list[tuple[int, list[str]]]:
    """Which params (by position) have a state entry, and its keys."""
    pos = {id(p): i for i, p in enumerate(_params_of(opt))}
    return sorted((pos[id(p)], sorted(s)) for p, s in opt.state.items())


def _assert_unchanged(opt: torch.optim.Optimizer, before) -> None:
    params, state = before
    for i, (p, old) in enumerate(zip(_params_of(opt), params)):
        assert bitwise_equal(p.detach(), old), f"param {i} changed"
    now = list(opt.state.items())
    assert [id(p) for p, _ in now] == [id(p) for p, _ in state], \
        "state entries were added or removed"
    for i, ((_, s), (_, old)) in enumerate(zip(now, state)):
        assert s.keys() == old.keys(), f"state {i}: keys changed"
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                assert bitwise_equal(v.detach(), old[k]), f"state {i}[{k!r}] changed"
            else:
                assert v == old[k], f"state {i}[{k!r}] changed"


def _assert_close(cls: str, dtype: torch.dtype, got: list, runs: dict, steps: int,
                  what: str) -> None:
    """pyoptim's tensors `got` against torch's (`runs`: impl -> tensors), by the rule of
    tests/tolerances.py for the optimizer: Adam(W) within PARITY of torch's for-loop (of its
    fused kernel for bfloat16/float16), relative to torch's own loop <-> fused spread; SGD per
    sgd_tol (bitwise where ATen fuses add(alpha)); SparseAdam per SPARSE_ADAM_VS_TORCH_MKL
    (torch.testing's dtype defaults where that table has no row)."""
    ref = runs["loop"]
    assert len(got) == len(ref), what
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, what
    if cls in ADAMS:
        reduced = dtype in (torch.bfloat16, torch.float16)
        ref_name, other = ("fused", "loop") if reduced else ("loop", "fused")

        def flat(ts):
            return torch.cat([t.detach().double().flatten() for t in ts] or [torch.zeros(0)])

        r, o, g = flat(runs[ref_name]), flat(runs[other]), flat(got)
        if r.numel() == 0:
            return
        assert torch.isfinite(r).all(), f"{what}: torch's result is not finite"
        spread = (o - r).abs().max().item()
        dist = (g - r).abs().max().item()
        bound = parity_tolerance("adam", dtype).bound(spread, r.abs().max().item(), dtype)
        assert dist <= bound, f"{what}: |pyoptim - torch| = {dist:.3g} > {bound:.3g}"
    elif cls == "SGD":
        for a, b in zip(got, ref):
            torch.testing.assert_close(a.detach(), b.detach(), **sgd_tol(dtype, steps), msg=what)
    else:
        tol = SPARSE_ADAM_VS_TORCH_MKL.get(dtype)
        kw = dict(atol=tol[0], rtol=tol[1]) if tol else {}
        for a, b in zip(got, ref):
            torch.testing.assert_close(a.detach(), b.detach(), **kw, msg=what)


def _assert_state_dicts_match(cls: str, dtype: torch.dtype, sds: dict, steps: int) -> None:
    """state_dict()["state"] of every impl: same params, same keys, equal step counts (and their
    dtype), the tensors within the optimizer's tolerance."""
    ref = sds["loop"]["state"]
    got = sds["pyoptim"]["state"]
    assert sorted(got) == sorted(ref), "state_dict(): params with state differ from torch's"
    for i in ref:
        assert got[i].keys() == ref[i].keys(), f"state_dict()['state'][{i}]: keys"
        for k in ref[i]:
            if k == "step":
                a, b = got[i][k], ref[i][k]
                if isinstance(b, torch.Tensor):
                    assert isinstance(a, torch.Tensor) and a.dtype == b.dtype, f"[{i}]['step']"
                    a, b = a.item(), b.item()
                assert a == b, f"state_dict()['state'][{i}]['step']: {a} != {b}"
                continue
            _assert_close(cls, dtype, [got[i][k]], {n: [sd["state"][i][k]] for n, sd in
                                                    sds.items()}, steps,
                          f"state_dict()['state'][{i}][{k!r}]")


# ---- 1. negative or fractional step counts ----------------------------------------------------


def _adam_with_state(cls: str):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
    opt = getattr(pyoptim, cls)(params, lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    _set_grads(cls, params, gen)
    opt.step()
    _set_grads(cls, params, gen)
    return params, opt


@pytest.mark.parametrize("value", [-1.0, -0.5, 2.5], ids=["-1", "-0.5", "2.5"])
@pytest.mark.parametrize("how", ["load_state_dict", "fill_"])
@pytest.mark.parametrize("cls", ADAMS)
def test_bad_step_count_raises_and_changes_nothing(cls, how, value):
    """The op rejects the count (ValueError). torch 2.14's for-loop raises ZeroDivisionError for
    -1 only (1 - beta^0 after its increment) and steps with a fractional count; the issue asks
    for an error for both."""
    params, opt = _adam_with_state(cls)
    if how == "fill_":
        opt.state[params[-1]]["step"].fill_(value)
    else:
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][1]["step"] = torch.tensor(value)
        opt.load_state_dict(sd)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="step count must be a non-negative whole number"):
        opt.step()
    _assert_unchanged(opt, before)


def test_negative_step_count_torch_premise():
    """What the issue reports: torch.optim.Adam raises on a step count of -1 (its bias
    correction divides by 1 - beta^0)."""
    p = nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], foreach=False)
    p.grad = torch.randn(3)
    opt.step()
    opt.state[p]["step"].fill_(-1)
    with pytest.raises((ZeroDivisionError, RuntimeError, ValueError)):
        opt.step()


@pytest.mark.parametrize("value", [-1, -0.5, 2.5], ids=["-1", "-0.5", "2.5"])
@pytest.mark.parametrize("how", ["state", "load_state_dict"])
@pytest.mark.parametrize("cls", ["SparseAdam", "lazy_sparse"])
def test_sparse_adam_bad_step_count_raises_and_changes_nothing(cls, how, value):
    """SparseAdam (an int count) and Adam(lazy_sparse=True) (a tensor count) with sparse grads:
    the op rejects the count as adam_ does (ValueError), not a truncated one."""
    if cls == "SparseAdam":
        params, opt = _adam_with_state("SparseAdam")
        bad = value
    else:
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
        opt = pyoptim.Adam(params, lr=1e-2, lazy_sparse=True)
        gen = torch.Generator().manual_seed(1)
        _set_grads("SparseAdam", params, gen)
        opt.step()
        _set_grads("SparseAdam", params, gen)
        bad = torch.tensor(float(value))
    if how == "state":
        opt.state[params[-1]]["step"] = bad
    else:
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][1]["step"] = bad
        opt.load_state_dict(sd)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="step count must be a non-negative whole number"):
        opt.step()
    _assert_unchanged(opt, before)


# ---- 2. resetting state -----------------------------------------------------------------------

RESETS = {
    "clear": lambda opt, p: opt.state[p].clear(),
    "new-dict": lambda opt, p: opt.state.__setitem__(p, {}),
    "new-tensor": lambda opt, p: opt.state[p].__setitem__(
        "momentum_buffer" if "momentum_buffer" in opt.state[p] else "exp_avg",
        torch.zeros_like(p)),
}


def _five_steps_like_torch(cls: str, between: Callable[[str, float, list, torch.optim.Optimizer],
                                                     None]) -> None:
    """Five steps on two params, pyoptim and torch side by side, fresh grads each step;
    `between(impl, k, params, opt)` runs after setting step k's grads (before step k) and with
    k + 0.5 after it. Params and state_dicts must then match torch's."""
    kw = dict(lr=0.05, momentum=0.9) if cls == "SGD" else dict(lr=0.05)
    params, sds = {}, {}
    for impl in _impls(cls):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(6, 3)), nn.Parameter(torch.randn(4, 2))]
        opt = _optimizer(impl, cls, ps, **kw)
        gen = torch.Generator().manual_seed(1)
        for k in range(5):
            _set_grads(cls, ps, gen)
            between(impl, k, ps, opt)
            opt.step()
            between(impl, k + 0.5, ps, opt)
        params[impl] = ps
        sds[impl] = opt.state_dict()
    _assert_close(cls, torch.float32, params["pyoptim"], params, 5, "params")
    _assert_state_dicts_match(cls, torch.float32, sds, 5)


@pytest.mark.parametrize("reset", list(RESETS))
@pytest.mark.parametrize("cls", ALL)
def test_state_reset_is_seen_like_torch(cls, reset):
    def between(impl, k, ps, opt):
        if k == 1.5:
            RESETS[reset](opt, ps[0])

    _five_steps_like_torch(cls, between)


def test_state_reset_without_a_later_step_keeps_state_dict_like_torch():
    """state_dict() right after `state[p] = {}` / clear(): torch lists what the state holds."""
    sds = {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(3)) for _ in range(2)]
        opt = _optimizer(impl, "Adam", ps, lr=0.1)
        for p in ps:
            p.grad = torch.ones(3)
        opt.step()
        opt.state[ps[0]] = {}
        opt.state[ps[1]].clear()
        sds[impl] = {i: sorted(s) for i, s in opt.state_dict()["state"].items()}
    assert sds["pyoptim"] == sds["loop"]


MISSING_KEY_CLASSES = ("Adam", "AdamW", "SparseAdam", "Adamax", "Adagrad")


def _key_subsets(cls: str) -> list[tuple[str, ...]]:
    """Every set of state keys that leaves the dict not empty (torch's keys of `cls`)."""
    keys = {"Adagrad": ("step", "sum"), "Adamax": ("step", "exp_avg", "exp_inf")}.get(
        cls, ("step", "exp_avg", "exp_avg_sq"))
    return [sub for n in range(1, len(keys)) for sub in itertools.combinations(keys, n)]


@pytest.mark.parametrize("cls", MISSING_KEY_CLASSES)
def test_state_dict_missing_a_key_raises_torchs_key_error(cls):
    """A state dict that is not empty but lacks keys (a partial checkpoint, `del
    state[p][key]`): torch's KeyError, naming the key torch reads first, and nothing changes
    (the param without state yet gets none)."""
    for missing in _key_subsets(cls):
        errors = []
        for impl in ("pyoptim", "loop"):
            torch.manual_seed(0)
            ps = [nn.Parameter(torch.randn(4, 2)) for _ in range(3)]
            opt = _optimizer(impl, cls, ps, lr=0.1)
            gen = torch.Generator().manual_seed(1)
            _set_grads(cls, ps[:2], gen)
            opt.step()
            for key in missing:
                del opt.state[ps[1]][key]
            _set_grads(cls, ps, gen)
            before = _snapshot(opt)
            with pytest.raises(KeyError) as info:
                opt.step()
            errors.append(info.value.args)
            if impl == "pyoptim":
                _assert_unchanged(opt, before)
                with pytest.raises(KeyError):  # a Plan kept from the last step: the same
                    opt.step()
        assert errors[0] == errors[1], (cls, missing)


# ---- 3. load_state_dict + step cycles keep nothing alive --------------------------------------


def _footprint(root: object) -> int:
    """Entries of every container reachable from `root` through dicts, lists, tuples, sets and
    the __dict__ of pyoptim's own objects (tensors count one and are not entered)."""
    seen: set[int] = set()
    stack = [root]
    n = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (torch.Tensor, str, bytes, int, float, bool,
                                               type, types.ModuleType, Callable)):
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            n += len(obj)
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            n += len(obj)
            stack.extend(obj)
        elif type(obj).__module__.startswith("pyoptim") and hasattr(obj, "__dict__"):
            stack.append(vars(obj))
    return n


@pytest.mark.parametrize("cls", ALL)
def test_load_state_dict_cycles_keep_no_old_state_alive(cls):
    """After each load_state_dict + step cycle the state tensors of the cycle before are
    garbage (torch keeps none either), and no container in the optimizer grows."""
    kw = dict(lr=0.01, momentum=0.9) if cls == "SGD" else dict(lr=0.01)
    refs, opts = {}, {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
        opt = _optimizer(impl, cls, [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}], **kw)
        gen = torch.Generator().manual_seed(1)
        _set_grads(cls, ps, gen)
        opt.step()
        sd = copy.deepcopy(opt.state_dict())
        refs[impl], sizes = [], []
        for _ in range(6):
            opt.load_state_dict(copy.deepcopy(sd))
            _set_grads(cls, ps, gen)
            opt.step()
            refs[impl].extend(weakref.ref(v) for s in opt.state.values() for v in s.values()
                              if isinstance(v, torch.Tensor))
            sizes.append(_footprint(vars(opt)))
        assert sizes[-1] == sizes[0], f"{impl}: the optimizer's containers grow: {sizes}"
        opts[impl] = opt
    gc.collect()
    alive = {}
    for impl, opt in opts.items():
        current = {id(v) for s in opt.state.values() for v in s.values()}
        alive[impl] = sum(r() is not None and id(r()) not in current for r in refs[impl])
    assert alive["loop"] == 0  # torch keeps nothing: the premise
    assert alive["pyoptim"] == 0, f"{alive['pyoptim']} state tensors of old cycles still alive"


# ---- 4. hyper-parameters beyond the math type's range -----------------------------------------

# (cls, constructor kwargs, huge values set in the group before the second step)
OVERFLOW_CASES = {
    "Adam-lr": ("Adam", {}, dict(lr=1e300)),
    "Adam-weight_decay": ("Adam", {}, dict(weight_decay=1e300)),
    "Adam-decoupled-weight_decay": ("Adam", dict(decoupled_weight_decay=True),
                                    dict(weight_decay=1e300)),
    "Adam-eps": ("Adam", {}, dict(eps=1e300)),
    "AdamW-lr": ("AdamW", {}, dict(lr=1e300)),
    "AdamW-weight_decay": ("AdamW", {}, dict(weight_decay=1e300)),
    "AdamW-eps": ("AdamW", {}, dict(eps=1e300)),
    "SGD-lr": ("SGD", {}, dict(lr=1e300)),
    "SGD-momentum-lr": ("SGD", dict(momentum=0.9), dict(lr=1e300)),
    "SGD-weight_decay": ("SGD", {}, dict(weight_decay=1e300)),
    "SGD-momentum-weight_decay": ("SGD", dict(momentum=0.9), dict(weight_decay=1e300)),
    "SparseAdam-lr": ("SparseAdam", {}, dict(lr=1e300)),
    "SparseAdam-eps": ("SparseAdam", {}, dict(eps=1e300)),
}


def _error(fn: Callable[[], object]) -> tuple[type, str] | None:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return type(e), str(e)
    return None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=["f32", "bf16", "f64"])
@pytest.mark.parametrize("case", list(OVERFLOW_CASES))
def test_huge_hyper_parameter_like_torch(case, dtype):
    """Where torch's for-loop raises, pyoptim raises the same (type and message) and changes
    nothing; where torch steps to finite params, pyoptim steps and matches; where torch silently
    writes inf/NaN, pyoptim raises the overflow error instead (the issue) and changes nothing.
    The huge value comes in on the second step (state exists), when a fresh param also gets its
    first grad (its lazily created state must not stay behind)."""
    cls, ctor, huge = OVERFLOW_CASES[case]
    base = dict(lr=1e-3, **ctor)
    outcome, opts, params, before = {}, {}, {}, None
    for impl in _impls(cls):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(4, 3).to(dtype)), nn.Parameter(torch.randn(5).to(dtype)),
              nn.Parameter(torch.randn(3, 2).to(dtype))]
        opt = _optimizer(impl, cls, ps, **base)
        gen = torch.Generator().manual_seed(1)
        _set_grads(cls, ps[:2], gen)
        opt.step()
        opt.param_groups[0].update(huge)
        _set_grads(cls, ps, gen)
        if impl == "pyoptim":
            before = _snapshot(opt)
        outcome[impl] = _error(opt.step)
        opts[impl], params[impl] = opt, ps
    torch_err, ours = outcome["loop"], outcome["pyoptim"]
    if torch_err is not None:
        assert ours is not None, f"torch raises {torch_err}; pyoptim steps"
        _assert_unchanged(opts["pyoptim"], before)
        assert ours == torch_err, f"pyoptim raises {ours}, torch {torch_err}"
        return
    finite = all(torch.isfinite(p).all() for p in params["loop"])
    if not finite:  # torch writes inf/NaN silently: pyoptim raises instead
        assert ours is not None, "torch writes inf/NaN here; pyoptim must raise, it steps"
        assert ours[0] is RuntimeError and OVERFLOW_MSG in ours[1], ours
        _assert_unchanged(opts["pyoptim"], before)
        return
    assert ours is None, f"torch steps to finite params; pyoptim raises {ours}"
    _assert_close(cls, dtype, params["pyoptim"], params, 2, "params")


# ---- 5. one param in two groups, grad_scale == 0, a step count inside a param -----------------


@pytest.mark.parametrize("first_step", [True, False], ids=["no-state", "with-state"])
@pytest.mark.parametrize("cls", ALL)
def test_param_in_two_groups_is_rejected(cls, first_step):
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(pyoptim, cls)([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1, **kw)
    gen = torch.Generator().manual_seed(1)
    if not first_step:
        _set_grads(cls, ps, gen)
        opt.step()
    opt.param_groups[1]["params"].append(ps[0])  # past torch's constructor check
    _set_grads(cls, ps, gen)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="overlap in memory"):
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("scale", [0.0, -0.0], ids=["0", "-0"])
@pytest.mark.parametrize("op", ["adam_", "sgd_"])
def test_op_grad_scale_zero_is_rejected(op, scale):
    torch.manual_seed(0)
    ps = [torch.randn(7), torch.randn(4, 3)]
    gs = [torch.randn_like(p) for p in ps]
    ms = [torch.randn_like(p) for p in ps]
    vs = [torch.rand_like(p) for p in ps]
    steps = [torch.tensor(3.0), torch.tensor(3.0)]
    watched = ps + gs + ms + vs + steps
    before = [t.clone() for t in watched]
    gscale = torch.tensor(scale)
    with pytest.raises(ValueError, match="grad_scale"):
        if op == "adam_":
            op_calls.adam_(ps, gs, ms, vs, [], steps, lr=0.1, beta1=0.9, beta2=0.999,
                           weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                           decoupled=False, grad_scale=gscale)
        else:
            op_calls.sgd_(ps, gs, ms, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
                          nesterov=False, maximize=False, is_first_step=False,
                          grad_scale=gscale)
    assert all(bitwise_equal(a, b) for a, b in zip(watched, before))


@pytest.mark.parametrize("first_step", [True, False], ids=["no-state", "with-state"])
@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD"])
def test_class_grad_scale_zero_is_rejected(cls, first_step):
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4))]
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(pyoptim, cls)(ps, lr=0.1, **kw)
    gen = torch.Generator().manual_seed(1)
    if not first_step:
        _set_grads(cls, ps, gen)
        opt.step()
    _set_grads(cls, ps, gen)
    opt.grad_scale = torch.tensor(0.0)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("cls", ADAMS)
def test_step_count_viewing_a_param_element_is_rejected(cls):
    params, opt = _adam_with_state(cls)
    p = params[0]
    with torch.no_grad():
        p.view(-1)[0] = 3.0  # a valid count, so only the aliasing is wrong
    opt.state[p]["step"] = p.detach().view(-1)[0]
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="overlap in memory"):
        opt.step()
    _assert_unchanged(opt, before)


# ---- 6. false rejections: torch steps these ---------------------------------------------------

INT_LR_CASES = {
    "SGD": dict(momentum=0.9), "SGD-fused": dict(momentum=0.9, fused=True),
    "Adam": {}, "Adam-fused": dict(fused=True),
    "Adam-fused-capturable": dict(fused=True, capturable=True), "AdamW": {},
    "Adamax": {}, "Adagrad": {}, "Adagrad-fused": dict(fused=True), "SparseAdam": {},
}


@pytest.mark.parametrize("case", list(INT_LR_CASES))
def test_integer_tensor_lr_steps_as_torch(case):
    """lr=torch.tensor(2) (an integer tensor): torch steps with its value, and so does pyoptim,
    bitwise as with the float tensor of that value and as torch within its tolerance."""
    cls = case.split("-")[0]
    STEPS = 3
    runs = {}
    for impl, lr in (("int", torch.tensor(2)), ("float", torch.tensor(2.0)),
                     ("torch", torch.tensor(2))):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(5, 3))
        mod = torch.optim if impl == "torch" else pyoptim
        opt = getattr(mod, cls)([p], lr=lr, **INT_LR_CASES[case])
        gen = torch.Generator().manual_seed(1)
        for _ in range(STEPS):
            _set_grads(cls, [p], gen)
            opt.step()
        runs[impl] = p.detach()
    assert bitwise_equal(runs["int"], runs["float"])
    torch.testing.assert_close(runs["int"], runs["torch"], **few_steps_tol(runs["torch"], STEPS))


@pytest.mark.parametrize("frozen", [False, True], ids=["all-grads", "a-param-without-grad"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cls", ["SGD", "Adagrad"])
def test_state_of_another_dtype_after_model_to(cls, dtype, frozen):
    """model.to(dtype) between steps (the state stays float32): torch's SGD and Adagrad keep
    training, and so does pyoptim, with the state converted to the param's dtype as torch's
    load_state_dict converts it (Note [State in another dtype]): as torch after a state_dict
    round trip (its fused kernel for bfloat16, which computes in float32 as pyoptim does).
    `frozen`: a param without a grad, so the step keeps its Plan (the op refuses the state's
    dtype, and the Plan is rebuilt)."""
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    out = {}
    for impl in ("pyoptim", "torch"):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
        if frozen:
            m[1].bias.requires_grad_(False)
        if impl == "pyoptim":
            opt = getattr(pyoptim, cls)(m.parameters(), **kw)
        else:
            opt = getattr(torch.optim, cls)(m.parameters(), **kw, fused=dtype == torch.bfloat16)
        x = torch.randn(4, 3)
        for k in range(4):
            if k == 2:
                m.to(dtype)
                x = x.to(dtype)
                if impl == "torch":
                    opt.load_state_dict(opt.state_dict())  # casts the state to the params'
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
        key = "momentum_buffer" if cls == "SGD" else "sum"
        assert all(opt.state[p][key].dtype == dtype for p in m.parameters() if p.requires_grad)
        out[impl] = [p.detach() for p in m.parameters()]
    for a, b in zip(out["pyoptim"], out["torch"]):
        torch.testing.assert_close(a, b)


VIEWS = {
    "split": lambda w: list(w.split(2, dim=1)),
    "strided-0::2-1::2": lambda w: [w[:, 0::2], w[:, 1::2]],
    "transposed-split": lambda w: list(w.t().split(3, dim=1)),
}


@pytest.mark.parametrize("views", list(VIEWS))
@pytest.mark.parametrize("cls", ALL)
def test_disjoint_interleaved_views_step_like_torch(cls, views):
    kw = dict(lr=0.05, momentum=0.9) if cls == "SGD" else dict(lr=0.05)
    bases, params = {}, {}
    for impl in _impls(cls):
        torch.manual_seed(0)
        w = torch.randn(4, 6)
        ps = [nn.Parameter(v) for v in VIEWS[views](w)]
        storage = w.untyped_storage().data_ptr()
        assert all(p.untyped_storage().data_ptr() == storage for p in ps)  # views, not copies
        opt = _optimizer(impl, cls, ps, **kw)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            _set_grads(cls, ps, gen)
            opt.step()
        bases[impl], params[impl] = [w], ps
    _assert_close(cls, torch.float32, bases["pyoptim"], bases, 3, "the viewed tensor")
    torch.manual_seed(0)
    assert not torch.equal(bases["pyoptim"][0], torch.randn(4, 6))  # the views did step


@pytest.mark.parametrize("cls", ALL)
def test_interleaved_views_sharing_elements_are_rejected(cls):
    torch.manual_seed(0)
    w = torch.randn(4, 6)
    ps = [nn.Parameter(w[:, 0:3]), nn.Parameter(w[:, 2:5])]  # column 2 in both
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(pyoptim, cls)(ps, lr=0.1, **kw)
    _set_grads(cls, ps, torch.Generator().manual_seed(1))
    before = _snapshot(opt)
    w_before = w.clone()
    with pytest.raises(ValueError, match="overlap in memory"):
        opt.step()
    _assert_unchanged(opt, before)
    assert bitwise_equal(w, w_before)


OVERLAP_CLASSES = {
    "Adam": lambda ps: pyoptim.Adam(ps, lr=0.1),
    "SGD": lambda ps: pyoptim.SGD(ps, lr=0.1),
    "SGD-momentum": lambda ps: pyoptim.SGD(ps, lr=0.1, momentum=0.9),
    "Adamax": lambda ps: pyoptim.Adamax(ps, lr=0.1),
    "Adagrad": lambda ps: pyoptim.Adagrad(ps, lr=0.1),
}


@pytest.mark.parametrize("cls,which", [(c, w) for c in OVERLAP_CLASSES for w in ("param", "state")
                                       if (c, w) != ("SGD", "state")])  # plain SGD: no state
def test_as_strided_tensor_whose_elements_overlap_is_rejected(cls, which):
    """A param (or a state tensor) made with as_strided whose rows overlap ((3, 3) over strides
    (2, 1): element [0, 2] is element [1, 0]) shares elements with itself: ValueError, nothing
    changed. at::has_internal_overlap says "too hard" for it (it finds stride 0 only), and the
    step went on: a result that depends on the order of the writes (0.18 from torch's Adam)."""
    torch.manual_seed(0)
    base = torch.randn(20)
    p = nn.Parameter(torch.empty(0))
    p.data = base.as_strided((3, 3), (2, 1)) if which == "param" else torch.randn(3, 3)
    opt = OVERLAP_CLASSES[cls]([p])
    p.grad = torch.randn(3, 3)
    if which == "state":
        opt.step()
        key = next(k for k, v in opt.state[p].items() if k != "step")
        opt.state[p][key] = torch.zeros(20).as_strided((3, 3), (2, 1))
        opt.state[p][key].copy_(torch.ones(3, 3))
    before = _snapshot(opt)
    base_before = base.clone()
    with pytest.raises(ValueError, match="has elements that share memory"):
        opt.step()
    _assert_unchanged(opt, before)
    assert bitwise_equal(base, base_before)


def test_as_strided_param_with_disjoint_elements_steps_like_torch():
    """A param whose dims do not nest but whose elements are disjoint (rows 0, 2, 4 and 3, 5, 7
    of one storage) steps, as torch's does: the exact check tells it from overlapping ones."""
    params = {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        base = torch.randn(8)
        p = nn.Parameter(torch.empty(0))
        p.data = base.as_strided((2, 3), (3, 2))
        opt = _optimizer(impl, "SGD", [p], lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        for _ in range(2):
            _set_grads("SGD", [p], gen)
            opt.step()
        params[impl] = [base]
    _assert_close("SGD", torch.float32, params["pyoptim"], params, 2, "params")


@pytest.mark.parametrize("step_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
@pytest.mark.parametrize("cls", ADAMS)
def test_int_step_tensor_steps_like_torch(cls, step_dtype):
    params, steps = {}, {}
    for impl in _impls(cls):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
        opt = _optimizer(impl, cls, ps, lr=0.05)
        gen = torch.Generator().manual_seed(1)
        _set_grads(cls, ps, gen)
        opt.step()
        # torch's fused kernel (the yardstick of its spread) takes float32 counts only
        opt.state[ps[0]]["step"] = torch.tensor(5, dtype=step_dtype if impl != "fused"
                                                else torch.float32)
        for _ in range(2):
            _set_grads(cls, ps, gen)
            opt.step()
        params[impl] = ps
        steps[impl] = opt.state[ps[0]]["step"]
    _assert_close(cls, torch.float32, params["pyoptim"], params, 3, "params")
    assert steps["pyoptim"].dtype == steps["loop"].dtype == step_dtype
    assert steps["pyoptim"].item() == steps["loop"].item() == 7


@pytest.mark.parametrize("count", [(torch.float16, 2048.0), (torch.bfloat16, 256.0)],
                         ids=["float16-2048", "bfloat16-256"])
@pytest.mark.parametrize("cls", ADAMS)
def test_step_count_that_stops_counting_in_its_dtype_steps_like_torch(cls, count):
    """torch counts with `step_t += 1` in the count's dtype and its bias corrections read the
    count back: a float16 count of 2048 stays 2048 (2049 rounds to it), so the step's math uses
    2048. The op used 2049 and stored 2048 (|param - torch's| ~3e-5 here)."""
    dtype, value = count
    params = {}
    for impl in _impls(cls):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(4, 3))]
        opt = _optimizer(impl, cls, ps, lr=0.1)
        gen = torch.Generator().manual_seed(1)
        _set_grads(cls, ps, gen)
        opt.step()
        # torch's fused kernel (the yardstick of its spread) takes float32 counts only: one
        # below, which its increment brings to the count torch's loop steps with
        opt.state[ps[0]]["step"] = (torch.tensor(value, dtype=dtype) if impl != "fused"
                                    else torch.tensor(value - 1))
        _set_grads(cls, ps, gen)
        opt.step()
        params[impl] = ps
        if impl != "fused":
            step = opt.state[ps[0]]["step"]
            assert step.dtype == dtype and step.item() == value, impl
    _assert_close(cls, torch.float32, params["pyoptim"], params, 2, "params")


NARROW_COUNT_CLASSES = {
    "Adam": lambda ps: pyoptim.Adam(ps, lr=0.1),
    "AdamW": lambda ps: pyoptim.AdamW(ps, lr=0.1),
    "Adamax": lambda ps: pyoptim.Adamax(ps, lr=0.1),
    "Adagrad": lambda ps: pyoptim.Adagrad(ps, lr=0.1),
    "Adagrad-sparse": lambda ps: pyoptim.Adagrad(ps, lr=0.1),
    "RowWiseAdagrad": lambda ps: pyoptim.RowWiseAdagrad(ps, lr=0.1),
    "Adam-lazy_sparse": lambda ps: pyoptim.Adam(ps, lr=0.1, lazy_sparse=True),
}


@pytest.mark.parametrize("count", [(torch.uint8, 255), (torch.int8, 127), (torch.int16, 32767)],
                         ids=["uint8", "int8", "int16"])
@pytest.mark.parametrize("cls", list(NARROW_COUNT_CLASSES))
def test_step_count_at_the_largest_of_its_integer_dtype_raises_and_changes_nothing(cls, count):
    """An integer count whose increment does not fit its dtype (torch's wraps to 0 or a negative
    count) raises ValueError before anything is written. The op stepped the params, then raised
    the count's overflow error as it stored it: params changed, the step not counted."""
    dtype, value = count
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5, 2))]
    opt = NARROW_COUNT_CLASSES[cls](ps)
    kind = "SparseAdam" if cls.endswith("sparse") else cls
    gen = torch.Generator().manual_seed(1)
    _set_grads(kind, ps, gen)
    opt.step()
    opt.state[ps[-1]]["step"] = torch.tensor(value, dtype=dtype)
    _set_grads(kind, ps, gen)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="the largest count its dtype"):
        opt.step()
    _assert_unchanged(opt, before)
    opt.state[ps[-1]]["step"] = torch.tensor(value - 1, dtype=dtype)
    opt.step()
    assert opt.state[ps[-1]]["step"].item() == value


MIXED = [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
         (torch.float32, torch.float64), (torch.float64, torch.float32),
         (torch.bfloat16, torch.float32)]


SGD_CONFIGS = {
    "momentum=0": dict(lr=0.1),
    "momentum=0.9": dict(lr=0.1, momentum=0.9),
    "momentum=0.9-nesterov-wd": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
}


@pytest.mark.parametrize("config", list(SGD_CONFIGS))
@pytest.mark.parametrize("dtypes", MIXED, ids=lambda d: f"{d[0]}-param-{d[1]}-grad".replace(
    "torch.", ""))
def test_sgd_grad_of_another_dtype_steps_like_torch(dtypes, config):
    """torch promotes; pyoptim hands such params to torch's own single-tensor SGD, so the
    mixed param and its momentum buffer (dtype included) are torch's bit for bit. A float32
    param with a float32 grad steps in the same call (pyoptim's kernel, sgd_tol)."""
    p_dtype, g_dtype = dtypes
    kw = SGD_CONFIGS[config]
    params, bufs = {}, {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        mixed = nn.Parameter(torch.randn(4, 3).to(p_dtype))
        mixed.grad_dtype = None  # torch allows a grad of another dtype only so
        plain = nn.Parameter(torch.randn(5))
        opt = _optimizer(impl, "SGD", [mixed, plain], **kw)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            mixed.grad = torch.randn(4, 3, generator=gen).to(g_dtype)
            plain.grad = torch.randn(5, generator=gen)
            opt.step()
        params[impl] = (mixed, plain)
        bufs[impl] = [opt.state[p].get("momentum_buffer") for p in (mixed, plain)]
    assert bitwise_equal(params["pyoptim"][0].detach(), params["loop"][0].detach())
    torch.testing.assert_close(params["pyoptim"][1].detach(), params["loop"][1].detach(),
                               **sgd_tol(torch.float32, 3))
    for a, b in zip(bufs["pyoptim"], bufs["loop"]):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.dtype == b.dtype, f"momentum buffer dtype {a.dtype}, torch's {b.dtype}"
    if bufs["loop"][0] is not None:
        assert bitwise_equal(bufs["pyoptim"][0], bufs["loop"][0])


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["momentum=0", "momentum=0.9"])
def test_sgd_every_grad_of_another_dtype_steps_like_torch(momentum):
    """No param left for pyoptim's kernel: torch's SGD steps them all (the op is not called
    with empty lists, which cannot dispatch)."""
    got = {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        w = nn.Parameter(torch.randn(4, 3))
        w.grad_dtype = None
        opt = _optimizer(impl, "SGD", [w], lr=0.1, momentum=momentum)
        for step in range(2):
            w.grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(step)).bfloat16()
            opt.step()
        got[impl] = [w.detach(), *opt.state[w].values()]
    assert len(got["pyoptim"]) == len(got["loop"]) == (2 if momentum else 1)
    for a, b in zip(got["pyoptim"], got["loop"]):
        assert bitwise_equal(a, b)


# the mode group of test_sgd_grad_of_another_dtype_beside_a_mode_group: (param dtype, its kwargs)
SGD_MODE_GROUPS = {
    "master_weights": (torch.bfloat16, dict(master_weights=True, momentum=0.9)),
    "stochastic_rounding": (torch.bfloat16, dict(stochastic_rounding=True, momentum=0.9)),
    "state_dtype=8bit": (torch.float32, dict(state_dtype="8bit", momentum=0.9)),
    "kahan_summation": (torch.float16, dict(kahan_summation=True, momentum=0.9)),
    "kahan_summation-momentum=0": (torch.bfloat16, dict(kahan_summation=True, momentum=0.0)),
}


@pytest.mark.parametrize("mode", list(SGD_MODE_GROUPS))
def test_sgd_grad_of_another_dtype_beside_a_mode_group(mode):
    """A param with a grad of another dtype in a group without a mode steps as torch's SGD
    steps it while another group has a mode, and the mode group steps as it does alone
    (bitwise, params and state); such a grad in the mode group itself raises TypeError."""
    dtype, kw = SGD_MODE_GROUPS[mode]

    def run(with_mixed, with_mode):
        torch.manual_seed(0)
        mixed = nn.Parameter(torch.randn(4, 3))
        mixed.grad_dtype = None  # torch allows a grad of another dtype only so
        moded = [nn.Parameter(torch.randn(n).to(dtype)) for n in (300, 5)]
        groups = ([{"params": [mixed], "momentum": 0.9}] if with_mixed else []) + (
            [{"params": moded, **kw}] if with_mode else [])
        opt = (pyoptim.SGD(groups, lr=0.1) if with_mode else
               torch.optim.SGD(groups, lr=0.1, foreach=False))
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            mixed.grad = torch.randn(4, 3, generator=gen).bfloat16()
            for p in moded:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            opt.step()
        return [mixed, *moded], opt

    (mixed, *moded), opt = run(True, True)
    (ref_mixed, _, _), ref = run(True, False)
    (_, *ref_moded), alone = run(False, True)
    assert bitwise_equal(mixed.detach(), ref_mixed.detach())
    assert bitwise_equal(opt.state[mixed]["momentum_buffer"],
                         ref.state[ref_mixed]["momentum_buffer"])
    for p, q in zip(moded, ref_moded):
        assert bitwise_equal(p.detach(), q.detach())
        assert opt.state[p].keys() == alone.state[q].keys()
        for key, value in opt.state[p].items():
            assert bitwise_equal(value, alone.state[q][key]), key
    moded[0].grad_dtype = None
    moded[0].grad = torch.zeros(300, dtype=torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        opt.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["momentum=0", "momentum=0.9"])
def test_sgd_zero_dim_sparse_grad_steps_like_torch(momentum):
    params, bufs = {}, {}
    for impl in ("pyoptim", "loop"):
        p = nn.Parameter(torch.tensor(1.5))
        other = nn.Parameter(torch.tensor([0.5, -2.0]))
        opt = _optimizer(impl, "SGD", [p, other], lr=0.1, momentum=momentum)
        for k in range(3):
            p.grad = torch.tensor(0.25 + k).to_sparse()
            other.grad = torch.tensor([1.0, -1.0 + k])
            opt.step()
        params[impl] = [p, other]
        buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
        bufs[impl] = None if buf is None else buf.to_dense()  # torch keeps a sparse buffer
    for a, b in zip(params["pyoptim"], params["loop"]):
        torch.testing.assert_close(a.detach(), b.detach(), **sgd_tol(torch.float32, 3))
    assert (bufs["pyoptim"] is None) == (bufs["loop"] is None)
    if momentum:
        torch.testing.assert_close(bufs["pyoptim"], bufs["loop"], **sgd_tol(torch.float32, 3))


def _meta_linear() -> nn.Module:
    with torch.device("meta"):
        return nn.Linear(3, 2)


@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD"])
def test_meta_params_step_like_torch(cls):
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    states = {}
    for impl in ("pyoptim", "loop"):
        m = _meta_linear()
        opt = _optimizer(impl, cls, m.parameters(), **kw)
        for _ in range(2):
            for p in m.parameters():
                p.grad = torch.empty_like(p)
            opt.step()
        states[impl] = [opt.state[p] if p in opt.state else None for p in m.parameters()]
    for ours, theirs in zip(states["pyoptim"], states["loop"]):
        assert (ours is None) == (theirs is None)
        assert ours.keys() == theirs.keys()
        for k, v in theirs.items():
            a = ours[k]
            assert (a.device, a.dtype, a.shape) == (v.device, v.dtype, v.shape), k
            if k == "step":
                assert a.item() == v.item() == 2.0


@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD"])
def test_meta_params_with_fused_raise_torchs_error_then_step_after_to_empty(cls):
    """fused=True on meta params: torch's RuntimeError at step(), the state torch leaves (Note
    [Fused-flag errors] in pyoptim/adam.py); once the model
    is materialized (to_empty, params swapped in place so the optimizer keeps them) and has
    grads, the step succeeds and matches torch."""
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        errors, params, states, left = {}, {}, {}, {}
        for impl in ("pyoptim", "torch-fused"):
            m = _meta_linear()
            mod = pyoptim if impl == "pyoptim" else torch.optim
            opt = getattr(mod, cls)(m.parameters(), fused=True, **kw)
            for p in m.parameters():
                p.grad = torch.empty_like(p)
            errors[impl] = _error(opt.step)
            left[impl] = _state_layout(opt)
            m.to_empty(device="cpu")
            assert all(p.device.type == "cpu" for p in _params_of(opt))
            torch.manual_seed(0)
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape))
            for p in m.parameters():
                p.grad = torch.randn(p.shape)
            opt.step()
            params[impl] = list(m.parameters())
            states[impl] = opt
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    assert errors["torch-fused"] is not None and errors["torch-fused"][0] is RuntimeError
    assert "`fused=True` requires all the params to be floating point" in errors["torch-fused"][1]
    assert errors["pyoptim"] == errors["torch-fused"]
    assert left["pyoptim"] == left["torch-fused"]
    # the same values and grads, fresh, in torch's for-loop: the reference
    torch.manual_seed(0)
    ref = [nn.Parameter(torch.randn(p.shape)) for p in params["pyoptim"]]
    for p in ref:
        p.grad = torch.randn(p.shape)
    opt = _optimizer("loop", cls, ref, **kw)
    opt.step()
    runs = {"loop": ref, "fused": params["torch-fused"]}
    _assert_close(cls, torch.float32, params["pyoptim"], runs, 1, "params after to_empty")
    for p, q in zip(params["pyoptim"], ref):
        assert states["pyoptim"].state[p].keys() == opt.state[q].keys()
        if "step" in opt.state[q]:
            assert states["pyoptim"].state[p]["step"].item() == opt.state[q]["step"].item()


@pytest.mark.parametrize("cls", ADAMS)
def test_complex_param_with_fused_raises_torchs_error(cls):
    errors, opts = {}, {}
    for impl in ("pyoptim", "torch"):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3, dtype=torch.complex64))]
        for p in ps:
            p.grad = torch.randn_like(p)
        opt = getattr(pyoptim if impl == "pyoptim" else torch.optim, cls)(ps, fused=True)
        before = [p.detach().clone() for p in ps]
        errors[impl] = _error(opt.step)
        opts[impl] = opt
        assert all(bitwise_equal(p.detach(), b) for p, b in zip(ps, before))
    assert errors["torch"] is not None and errors["torch"][0] is RuntimeError
    assert errors["pyoptim"] == errors["torch"]
    # the state torch leaves (Note [Fused-flag errors] in pyoptim/adam.py)
    assert _state_layout(opts["pyoptim"]) == _state_layout(opts["torch"])


# ---- 7. sparse grads: values that alias written memory, indices of zero-width params ----------

SPARSE_CLASSES = {
    "SGD": lambda ps: pyoptim.SGD(ps, lr=0.5),
    "SGD-momentum": lambda ps: pyoptim.SGD(ps, lr=0.5, momentum=0.9),
    "SparseAdam": lambda ps: pyoptim.SparseAdam(ps, lr=0.5),
    "Adam-lazy_sparse": lambda ps: pyoptim.Adam(ps, lr=0.5, lazy_sparse=True),
    "Adagrad": lambda ps: pyoptim.Adagrad(ps, lr=0.5),
    "RowWiseAdagrad": lambda ps: pyoptim.RowWiseAdagrad(ps, lr=0.5),
}


@pytest.mark.parametrize("cls", list(SPARSE_CLASSES))
def test_sparse_grad_values_aliasing_the_param_step_as_a_copy(cls):
    """A sparse grad whose values are a view of the param's rows (grad row 2 is param row 1 and
    row 1 is row 2) steps bitwise as the same grad with cloned values: every row reads the
    values from before the step (torch.optim copies them where it coalesces the grad)."""
    results = []
    for clone in (False, True):
        torch.manual_seed(0)
        p = nn.Parameter(torch.randn(6, 3))
        opt = SPARSE_CLASSES[cls]([p])
        for _ in range(2):
            values = p.detach()[1:3]
            if clone:
                values = values.clone()
            p.grad = torch.sparse_coo_tensor(torch.tensor([[2, 1]]), values, (6, 3))
            opt.step()
        results.append([p.detach().clone(), *[v.clone() for v in opt.state[p].values()
                                               if torch.is_tensor(v)]])
    torch.manual_seed(0)
    assert any_changed([torch.randn(6, 3)], results[0][:1])  # the steps moved the param
    assert len(results[0]) == len(results[1])
    assert all(bitwise_equal(a, b) for a, b in zip(*results))


def test_rowwise_dense_grad_aliasing_other_param_rows_steps_as_a_copy():
    """RowWiseAdagrad with a dense grad that is a view of the param's storage shifted by a row:
    as the same grad cloned."""
    results = []
    for clone in (False, True):
        torch.manual_seed(0)
        base = torch.randn(5, 3)
        p = nn.Parameter(base[:4])
        opt = pyoptim.RowWiseAdagrad([p], lr=0.5)
        for _ in range(2):
            g = base[1:5]
            p.grad = g.clone() if clone else g
            opt.step()
        results.append([base.clone(), opt.state[p]["sum"].clone()])
    torch.manual_seed(0)
    assert any_changed([torch.randn(5, 3)], results[0][:1])  # the steps moved the param
    assert len(results[0]) == len(results[1])
    assert all(bitwise_equal(a, b) for a, b in zip(*results))


DENSE_CLASSES = {
    "Adam": lambda ps: pyoptim.Adam(ps, lr=0.5),
    "AdamW": lambda ps: pyoptim.AdamW(ps, lr=0.5, amsgrad=True),
    "SGD": lambda ps: pyoptim.SGD(ps, lr=0.5),
    "SGD-momentum": lambda ps: pyoptim.SGD(ps, lr=0.5, momentum=0.9, nesterov=True),
    "Adamax": lambda ps: pyoptim.Adamax(ps, lr=0.5),
    "Adagrad": lambda ps: pyoptim.Adagrad(ps, lr=0.5),
}


@pytest.mark.parametrize("other", [False, True], ids=["own-param", "other-param"])
@pytest.mark.parametrize("cls", list(DENSE_CLASSES))
def test_dense_grad_aliasing_written_memory_steps_as_a_copy(cls, other):
    """A dense grad that shares memory with a tensor the step writes steps bitwise as the same
    grad cloned: a view of the param's storage shifted by one element (own-param), or another
    param (other-param: p1.grad is p0's memory). The elementwise kernels read such a grad in
    place while writing: element k read element k - 1's new value (Adam off by 0.2; torch's
    Adam reads the whole grad before it writes the param), and a grad that is another param
    was read while other threads wrote it."""
    results = []
    for clone in (False, True):
        torch.manual_seed(0)
        base = torch.randn(41)
        p0 = nn.Parameter(base[1:])
        p1 = nn.Parameter(torch.randn(40))
        opt = DENSE_CLASSES[cls]([p0, p1])
        for _ in range(2):
            g0 = torch.randn(40) if other else base[:-1]
            g1 = p0.detach() if other else torch.randn(40)
            p0.grad = g0.clone() if clone else g0
            p1.grad = g1.clone() if clone else g1
            opt.step()
        results.append([base.clone(), p1.detach().clone(),
                        *[v.clone() for p in (p0, p1) for v in opt.state[p].values()
                          if torch.is_tensor(v)]])
    assert len(results[0]) == len(results[1])
    assert all(bitwise_equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("cls", list(SPARSE_CLASSES))
def test_zero_width_param_checks_sparse_indices(cls):
    """A [5, 0] param whose sparse grad has row index 7: IndexError (as torch.optim.SGD and
    Adagrad raise) before anything is written, whatever the width; the step is not counted."""
    p = nn.Parameter(torch.zeros(5, 0))
    opt = SPARSE_CLASSES[cls]([p])
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 7]]), torch.zeros(2, 0), (5, 0),
                                     check_invariants=False)
    with pytest.raises(IndexError, match="out of range"):
        opt.step()
    # no state, or (Adagrad: created by its constructor) the step not counted
    assert all(float(st.get("step", 0)) == 0 for st in opt.state.values())
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 4]]), torch.zeros(2, 0), (5, 0))
    opt.step()
    if not cls.startswith("SGD"):  # (SGD counts no steps)
        assert float(opt.state[p]["step"]) == 1


# ---- a failed step leaves no new state; multi-group steps are all-or-nothing ------------------


def _bad_sparse_index(shape) -> torch.Tensor:
    return torch.sparse_coo_tensor(torch.tensor([[0, shape[0]]]), torch.ones(2, *shape[1:]),
                                   shape, check_invariants=False)


# cls -> (what makes the LAST param bad, the exception)
BAD_LAST = {
    "Adam-sparse-grad": ("Adam", lambda p: setattr(p, "grad", torch.randn(p.shape).to_sparse()),
                         RuntimeError),
    "AdamW-step-count": ("AdamW", None, ValueError),
    "SGD-bad-sparse-index": ("SGD", lambda p: setattr(p, "grad", _bad_sparse_index(p.shape)),
                             IndexError),
    "SparseAdam-dense-grad": ("SparseAdam", lambda p: setattr(p, "grad", torch.randn(p.shape)),
                              RuntimeError),
    "SparseAdam-bad-index": ("SparseAdam",
                             lambda p: setattr(p, "grad", _bad_sparse_index(p.shape)),
                             IndexError),
}


@pytest.mark.parametrize("case", list(BAD_LAST))
def test_failed_first_step_leaves_no_state_and_the_next_step_is_torchs_first(case):
    cls, spoil, exc = BAD_LAST[case]
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    torch.manual_seed(0)
    init = [torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)]
    ps = [nn.Parameter(t.clone()) for t in init]
    opt = getattr(pyoptim, cls)(ps, **kw)
    gen = torch.Generator().manual_seed(1)
    _set_grads(cls, ps, gen)
    if spoil is None:  # a step count that cannot be: the param has state, the others not
        opt.state[ps[-1]]["step"] = torch.tensor(-3.0)
        opt.state[ps[-1]]["exp_avg"] = torch.zeros(5, 3)
        opt.state[ps[-1]]["exp_avg_sq"] = torch.zeros(5, 3)
    else:
        spoil(ps[-1])
    before = _snapshot(opt)
    with pytest.raises(exc):
        opt.step()
    _assert_unchanged(opt, before)  # no entries for the params that had none
    assert all(p not in opt.state for p in ps[:-1])
    # the defect fixed, the step is a first step as torch's
    ps[-1].grad = None
    if spoil is None:
        del opt.state[ps[-1]]
    opt.step()
    ref = [nn.Parameter(t.clone()) for t in init[:-1]]
    for p, q in zip(ref, ps):
        p.grad = q.grad.clone()
    theirs = {"loop": _optimizer("loop", cls, ref, **kw)}
    if cls in ADAMS:
        fused = [nn.Parameter(t.clone()) for t in init[:-1]]
        for p, q in zip(fused, ps):
            p.grad = q.grad.clone()
        theirs["fused"] = _optimizer("fused", cls, fused, **kw)
    for o in theirs.values():
        o.step()
    runs = {k: _params_of(o) for k, o in theirs.items()}
    _assert_close(cls, torch.float32, ps[:-1], runs, 1, "params")
    sds = {k: o.state_dict() for k, o in theirs.items()}
    ours = opt.state_dict()
    ours["state"] = {i: s for i, s in ours["state"].items() if i < len(ref)}
    sds["pyoptim"] = ours
    _assert_state_dicts_match(cls, torch.float32, sds, 1)


# the defect in group 1 of 2, after a first good step (state exists in group 0)
GROUP_DEFECTS = {
    "Adam-step-count": ("Adam", lambda opt, p: opt.state[p]["step"].fill_(-1), ValueError),
    "AdamW-fractional-step": ("AdamW", lambda opt, p: opt.state[p]["step"].fill_(0.5),
                              ValueError),
    "Adam-huge-lr": ("Adam", lambda opt, p: opt.param_groups[1].update(lr=1e300),
                     RuntimeError),
    "SGD-huge-lr": ("SGD", lambda opt, p: opt.param_groups[1].update(lr=1e300), RuntimeError),
    "SGD-huge-weight_decay": ("SGD",
                              lambda opt, p: opt.param_groups[1].update(weight_decay=1e300),
                              RuntimeError),
    "SparseAdam-step-count": ("SparseAdam", lambda opt, p: opt.state[p].update(step=-1),
                              ValueError),
    "SparseAdam-huge-lr": ("SparseAdam", lambda opt, p: opt.param_groups[1].update(lr=1e300),
                           RuntimeError),
    "Adam-grad-scale-zero": ("Adam", lambda opt, p: setattr(opt, "grad_scale",
                                                            torch.tensor(0.0)), ValueError),
    "Adam-views-sharing-elements": ("Adam", None, ValueError),
    "SGD-same-param-twice": ("SGD", None, ValueError),
}


@pytest.mark.parametrize("case", list(GROUP_DEFECTS))
def test_bad_last_group_changes_no_group(case):
    cls, spoil, exc = GROUP_DEFECTS[case]
    kw = dict(lr=0.1, momentum=0.9) if cls == "SGD" else dict(lr=0.1)
    torch.manual_seed(0)
    first = [nn.Parameter(torch.randn(6, 3)) for _ in range(2)]
    fresh = nn.Parameter(torch.randn(4))  # group 0, first grad in the failing step
    last = [nn.Parameter(torch.randn(5, 2))]
    opt = getattr(pyoptim, cls)([{"params": first + [fresh]}, {"params": last, "lr": 0.2}],
                                **kw)
    gen = torch.Generator().manual_seed(1)
    _set_grads(cls, first + last, gen)
    start = [p.detach().clone() for p in first]
    opt.step()
    assert all(not torch.equal(p, s) for p, s in zip(first, start))  # group 0 does step
    if spoil is None:
        w = torch.randn(4, 6)
        extra = ([nn.Parameter(w[:, 0:3]), nn.Parameter(w[:, 2:5])] if cls == "Adam"
                 else [first[0]])
        opt.param_groups[1]["params"].extend(extra)
    else:
        spoil(opt, last[0])
    _set_grads(cls, _params_of(opt), gen)
    before = _snapshot(opt)
    with pytest.raises(exc):
        opt.step()
    _assert_unchanged(opt, before)
    assert fresh not in opt.state


# ---- Note [Grads read by the op] (csrc/ops/checks.h) -------------------------------------------
# Once every param has a grad, the optimizers let the op read each param's .grad itself. What
# changes between steps must still be seen as torch sees it.

GRAD_CLASSES = ("Adam", "AdamW", "SGD")


@pytest.mark.parametrize("cls", GRAD_CLASSES)
def test_grad_set_to_none_between_steps_skips_that_param_like_torch(cls):
    before = []

    def between(impl, k, ps, opt):
        if k == 2:
            ps[0].grad = None
            before[:] = [ps[0].detach().clone()]
        elif k == 2.5:
            assert bitwise_equal(ps[0].detach(), before[0]), f"{impl}: a param without grad moved"
        elif impl == "pyoptim" and k in (1.5, 4.5):  # the path this test is about was taken
            assert opt._pyoptim_plan.implicit_grads

    _five_steps_like_torch(cls, between)


@pytest.mark.parametrize("cls", ("Adam", "AdamW", "Adamax"))
def test_grad_turning_sparse_after_dense_steps_raises_torchs_error(cls):
    p = nn.Parameter(torch.randn(4, 3))
    opt = getattr(pyoptim, cls)([p], lr=0.1)
    for _ in range(2):
        p.grad = torch.randn(4, 3)
        opt.step()
    p.grad = torch.randn(4, 3).to_sparse()
    before = _snapshot(opt)
    name = "Adam" if cls == "AdamW" else cls  # torch's AdamW raises Adam's message
    with pytest.raises(RuntimeError, match=f"^{name} does not support sparse gradients"):
        opt.step()
    _assert_unchanged(opt, before)
    p.grad = torch.randn(4, 3)
    opt.step()  # dense again: steps
    assert opt.state[p]["step"].item() == 3


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["momentum=0", "momentum=0.9"])
def test_sgd_grad_changing_dtype_after_dense_steps_steps_like_torch(momentum):
    """Two steps with float32 grads, one with a bfloat16 grad (torch promotes), two more with
    float32 grads."""
    params = {}
    for impl in ("pyoptim", "loop"):
        torch.manual_seed(0)
        ps = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5))]
        ps[0].grad_dtype = None  # torch allows a grad of another dtype only so
        opt = _optimizer(impl, "SGD", ps, lr=0.1, momentum=momentum)
        gen = torch.Generator().manual_seed(1)
        for k in range(5):
            _set_grads("SGD", ps, gen)
            if k == 2:
                ps[0].grad = ps[0].grad.bfloat16()
            opt.step()
        params[impl] = ps
    _assert_close("SGD", torch.float32, params["pyoptim"], params, 5, "params")


def test_op_reads_each_params_grad_when_grads_is_empty():
    """adam_, sgd_ and a dense optimizer's op (adamax_) with grads=[]: bitwise the call with
    each param's .grad listed; a param without a grad raises before anything is written."""
    def run(op, grads_listed):
        torch.manual_seed(0)
        ps = [torch.randn(5, 3), torch.randn(7)]
        for p in ps:
            p.grad = torch.randn_like(p)
        states = [torch.rand_like(p) for p in ps for _ in range(2)]
        steps = [torch.tensor(3.0) for _ in ps]
        grads = [p.grad for p in ps] if grads_listed else []
        op(ps, grads, states, steps)
        return [*ps, *states, *steps]

    hyper = dict(group_sizes=[2], lr_tensors=[], grad_scale=None, found_inf=None)
    adam = lambda ps, gs, st, steps: torch.ops.pyoptim.adam_.default(  # noqa: E731
        ps, gs, st[0::2], st[1::2], [], steps, hyper=[0.1, 0.9, 0.999, 0.01, 1e-8],
        flags=[False, False, True, False, False, False, False, False], **hyper)
    sgd = lambda ps, gs, st, steps: torch.ops.pyoptim.sgd_.default(  # noqa: E731
        ps, gs, st[0::2], hyper=[0.1, 0.9, 0.0, 0.01], flags=[False] * 7,
        first_step=[False, False], **hyper)
    adamax = lambda ps, gs, st, steps: torch.ops.pyoptim.adamax_.default(  # noqa: E731
        ps, gs, st[0::2] + st[1::2], steps, hyper=[0.1, 0.9, 0.999, 1e-8, 0.01], flags=[False],
        **hyper)
    for op in (adam, sgd, adamax):
        for a, b in zip(run(op, True), run(op, False)):
            assert bitwise_equal(a, b)
        ps = [torch.randn(5, 3), torch.randn(7)]
        ps[0].grad = torch.randn(5, 3)
        states = [torch.rand_like(p) for p in ps for _ in range(2)]
        steps = [torch.tensor(3.0) for _ in ps]
        before = [t.clone() for t in (*ps, *states, *steps)]
        # (every op names itself as torch.ops names it: pyoptim.<op>)
        no_grad = r"^pyoptim\.(adam|sgd|adamax)_: params\[1\] has no grad"
        with pytest.raises(ValueError, match=no_grad):
            op(ps, [], states, steps)
        for a, b in zip((*ps, *states, *steps), before):
            assert bitwise_equal(a, b)


def test_overlap_is_caught_after_calls_that_passed():
    """The overlap check skips its sort when the written ranges repeat those of the last call
    that passed (Note [Exact overlap] in csrc/ops/checks.h); a changed list is checked again."""
    a, b = torch.randn(8), torch.randn(8)
    ga, gb = torch.randn(8), torch.randn(8)
    states = [torch.zeros(8) for _ in range(4)]

    def call(params, grads):
        op_calls.adam_(params, grads, states[0:2], states[2:4], [],
                       [torch.tensor(0.0), torch.tensor(0.0)], lr=0.1, beta1=0.9, beta2=0.999,
                       weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False,
                       decoupled=False)

    for _ in range(2):
        call([a, b], [ga, gb])
    before = [t.clone() for t in (a, *states)]
    with pytest.raises(ValueError, match="overlap in memory"):
        call([a, a], [ga, gb])
    for x, y in zip((a, *states), before):
        assert bitwise_equal(x, y)
    call([a, b], [ga, gb])


class _Wrapper(torch.Tensor):
    """A wrapper subclass with no memory of its own (as functional collectives'
    AsyncCollectiveTensor): every op unwraps it."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype,
                                                   device=elem.device, strides=elem.stride())

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        def unwrap(x):
            return x.elem if isinstance(x, _Wrapper) else x

        return func(*torch.utils._pytree.tree_map(unwrap, args),
                    **torch.utils._pytree.tree_map(unwrap, kwargs or {}))


# grad values -> (a grad holding them that is not plain memory, the plain grad with its values)
NOT_PLAIN_GRADS = {
    "wrapper subclass": lambda g: (_Wrapper(g.clone()), g),
    "negated view": lambda g: (torch._neg_view(-g), g),
    "ZeroTensor": lambda g: (torch._efficientzerotensor(g.shape), torch.zeros_like(g)),
}


@pytest.mark.parametrize("cls", ("Adam", "AdamW", "SGD", "Adamax", "Adagrad"))
@pytest.mark.parametrize("kind", list(NOT_PLAIN_GRADS))
def test_grads_that_are_not_plain_memory_step_as_their_values(cls, kind):
    """Grads the op cannot read as memory (Note [Grads read by the op]) step bitwise as plain
    grads holding their values, on the steps where the op reads the grads itself too (it once
    read them as raw memory there: a crash for a subclass or a ZeroTensor, the wrong sign for a
    negated view)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=gen)
    grads = [torch.randn(5, 3, generator=gen) for _ in range(4)]
    out = []
    for which in (0, 1):
        p = nn.Parameter(w.clone())
        opt = getattr(pyoptim, cls)([p], lr=0.1, **({"momentum": 0.9} if cls == "SGD" else {}))
        for k, g in enumerate(grads):
            p.grad = NOT_PLAIN_GRADS[kind](g)[which] if k % 2 else g.clone()
            opt.step()
        out.append(p.detach())
    assert any_changed([w], out[:1]), cls  # the steps moved the param
    assert bitwise_equal(out[0], out[1]), cls


def _conj_grad_run(make, grads, resolve=False):
    """Two steps of `make([p])` on a complex param with autograd's grads of p.conj() (the
    conjugation bit set), or with those grads resolved. Returns the param, or the error."""
    p = nn.Parameter(torch.tensor([0.5 + 0.5j, -1 + 0j, 2 - 1j], dtype=torch.complex64))
    opt = make([p])
    try:
        for c in grads:
            opt.zero_grad()
            (p.conj() * c).real.sum().backward()
            assert p.grad.is_conj()
            if resolve:
                p.grad = p.grad.resolve_conj()
            opt.step()
    except RuntimeError as e:
        return e, p.detach(), opt
    return None, p.detach(), opt


@pytest.mark.parametrize("cls", ("SGD", "Adam", "AdamW", "Adamax", "Adagrad"))
def test_complex_grad_with_conjugation_bit_as_torch(cls):
    """A complex param's grad with the conjugation bit (autograd's grad of p.conj()): torch's
    SGD steps it, pyoptim's too, bitwise as the resolved grad and as torch's within a few ulps
    (torch computes in complex arithmetic); torch's Adam, AdamW, Adamax and Adagrad raise
    view_as_real's error, and so does pyoptim, changing nothing."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, dtype=torch.complex64, generator=gen) for _ in range(2)]
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1) if cls == "SGD" else \
        dict(lr=0.1)
    ours_err, ours, opt = _conj_grad_run(lambda ps: getattr(pyoptim, cls)(ps, **kw), grads)
    torch_err, ref, _ = _conj_grad_run(lambda ps: getattr(torch.optim, cls)(ps, **kw), grads)
    if cls == "SGD":
        assert ours_err is None and torch_err is None
        _, resolved, _ = _conj_grad_run(lambda ps: pyoptim.SGD(ps, **kw), grads, resolve=True)
        assert bitwise_equal(ours, resolved)
        torch.testing.assert_close(ours, ref, **sgd_unfused_tol(torch.float32, len(grads)))
        assert not bitwise_equal(ours, _conj_grad_run(
            lambda ps: pyoptim.SGD(ps, **kw), [c.conj() for c in grads])[1])  # conj matters
    else:
        assert type(ours_err) is type(torch_err) and str(ours_err) == str(torch_err)
        assert bitwise_equal(ours, torch.tensor([0.5 + 0.5j, -1 + 0j, 2 - 1j]))
        # Adagrad makes its state at construction (torch's); the others' is removed again
        assert len(opt.state) == (cls == "Adagrad")
        for state in opt.state.values():
            assert float(state["step"]) == 0 and not state["sum"].any()
