"""torch's own optimizer database (torch.testing._internal.common_optimizers.optim_db), run
against pyoptim's classes: the checks of torch's TestOptimRenewed that say "drop-in", in our own
code, driven by torch's OptimizerInfo for the matching torch class.

For every pyoptim class (Adam, AdamW, SGD, Adamax, Adagrad, SparseAdam) and every config torch
generates for it on the CPU (optim_inputs_func, with each supported foreach / fused /
differentiable variant, as _get_optim_inputs_including_global_cliquey_kwargs builds them):

  * the config constructs with torch's defaults and param_groups, steps, and stays within the
    tolerance table of torch.optim run with the same config (params and every state tensor, step
    counts equal): PARITY for the Adam family (k x torch's own for-loop <-> fused / foreach
    spread, + floor), sgd_tol / sgd_vs_torch_bound for SGD, SPARSE_ADAM_VS_TORCH_MKL for
    SparseAdam (tests/tolerances.py);
  * state_dicts cross both ways: torch's state loads into pyoptim and pyoptim's into torch,
    losslessly, and training continues within the same tolerance of torch continuing;
  * a step with no grads is a no-op that creates no state, as torch's;
  * it goes the right direction under each of the LR schedulers of the OptimizerInfo.

And per class: every optim_error_inputs_func entry raises torch's exception type, matching torch's
regex, at the same point (construction or step), with torch's exact message; with fused=True,
params on the meta device, complex and integer params raise torch's error at the step where
torch raises it and leave torch's state (Note [Fused-flag errors] in pyoptim/adam.py), as in
torch's test_fused_error_on_params_on_meta.

OptimizerInfo skips (DecorateInfo on TestOptimRenewed) apply to the check named after torch's
test. Runs are tiny (a few tensors, MATRIX_STEPS steps); grads are a fixed function of the params
plus seeded noise, so differences feed back as in training.
"""

from __future__ import annotations

import copy
import io
import unittest

import pytest
import torch
from conftest import PROFILE, PROFILES
from helpers import any_changed, assert_bitwise_equal, snapshot
from hypothesis import settings
from tolerances import (
    MATRIX_STEPS,
    SPARSE_ADAM_VS_TORCH_IEEE,
    SPARSE_ADAM_VS_TORCH_MKL,
    parity_tolerance,
    sgd_tol,
    sgd_vs_torch_bound,
)
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import pyoptim

# tiny tensors: a second intra-op thread only adds waiting (conftest's one_thread)
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]

DEVICE = "cpu"
DTYPE = torch.float32
PYOPTIM = {cls.__name__: cls for cls in (pyoptim.Adam, pyoptim.AdamW, pyoptim.SGD,
                                         pyoptim.Adamax, pyoptim.Adagrad, pyoptim.SparseAdam)}
INFOS = {info.name: info for info in optim_db if info.name in PYOPTIM}
FAMILY = {"Adam": "adam", "AdamW": "adam", "Adamax": "adam", "Adagrad": "adam", "SGD": "sgd",
          "SparseAdam": "sparse_adam"}
SHAPES = [(6, 4), (6,), (3, 6), (3,)]  # an MLP's weights and biases


def test_hypothesis_runs_with_conftests_profile():
    """This module imports torch's test utilities, which load a hypothesis profile of their own
    (torch's "dev": 10 examples, health checks on) when first imported: the tests of every module
    still run with the profile conftest.py loaded."""
    expected = settings(**PROFILES[PROFILE])
    for name in ("max_examples", "derandomize", "deadline", "suppress_health_check", "database"):
        assert getattr(settings.default, name) == getattr(expected, name), name
ROWS, COLS = 12, 4  # SparseAdam's embedding table
CONTINUE_FROM = 3  # steps before a state_dict crosses over


def _configs():
    out = []
    for name, info in INFOS.items():
        for k, cfg in enumerate(
                _get_optim_inputs_including_global_cliquey_kwargs(DEVICE, DTYPE, info)):
            out.append(pytest.param(name, cfg.kwargs, id=f"{name}-{k}-{cfg.desc}"))
    return out


CONFIGS = _configs()


def _skip_if_torch_skips(name: str, torch_test: str) -> None:
    """Apply the OptimizerInfo's skips for torch's test of that name (DecorateInfo on
    TestOptimRenewed): each active decorator is applied to a no-op and called."""
    for dec in INFOS[name].decorators:
        if not hasattr(dec, "is_active") or not dec.is_active(
                "TestOptimRenewed", torch_test, DEVICE, DTYPE, {}):
            continue
        for d in dec.decorators:
            try:
                d(lambda *a, **k: None)()
            except unittest.SkipTest as e:
                pytest.skip(f"torch's OptimizerInfo skips {torch_test}: {e}")
            except Exception:  # not a skip (a tolerance override, a dtype decorator)
                pass


# ---- runs --------------------------------------------------------------------------------------


def _params(name: str, kwargs: dict, like: list[torch.Tensor] | None = None
            ) -> list[torch.Tensor]:
    """The run's params: fresh, or copies of `like`."""
    g = torch.Generator().manual_seed(0)
    if like is not None:
        leaves = [p.detach().clone() for p in like]
    elif name == "SparseAdam":
        leaves = [torch.randn(ROWS, COLS, generator=g, dtype=DTYPE)]
    else:
        leaves = [torch.randn(s, generator=g, dtype=DTYPE) * 0.5 for s in SHAPES]
    if kwargs.get("differentiable"):  # in-place steps on a graph need non-leaf params
        return [p.requires_grad_(True).clone() for p in leaves]
    return leaves


def _set_grads(name: str, params: list[torch.Tensor], k: int) -> None:
    """Grads that depend on the params (differences feed back) plus step k's seeded noise."""
    g = torch.Generator().manual_seed(100 + k)
    for p in params:
        x = p.detach()
        if name == "SparseAdam":  # a lookup batch with duplicate rows
            idx = torch.randint(0, ROWS, (10,), generator=g)
            vals = torch.cos(3 * x[idx]) + 0.1 * torch.randn(10, COLS, generator=g)
            p.grad = torch.sparse_coo_tensor(idx[None], vals, x.shape)
        else:
            noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
            p.grad = torch.cos(3 * x) + 0.1 * noise


def _flat(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return (torch.view_as_real(t) if t.is_complex() else t).double().flatten()


class Run:
    """An optimizer trained a few steps: its params, state and state_dict at the end."""

    def __init__(self, cls, name: str, kwargs: dict, steps: int = MATRIX_STEPS,
                 start: Run | None = None):
        self.params = _params(name, kwargs, None if start is None else start.params)
        init = snapshot(self.params)
        self.opt = cls(self.params, **copy.deepcopy(kwargs))
        if start is not None:
            self.opt.load_state_dict(snapshot(start.state_dict))
            self.loaded = snapshot(self.opt.state_dict())
            for group in self.opt.param_groups:  # loading set the saved run's flags: this
                for flag in ("foreach", "fused", "differentiable"):  # run continues with its own
                    if flag in group:
                        group[flag] = self.opt.defaults[flag]
        for k in range(steps):
            _set_grads(name, self.params, k + (0 if start is None else CONTINUE_FROM))
            self.opt.step()
        self.moved = any_changed(init, self.params)
        self.state_dict = snapshot(self.opt.state_dict())  # detached
        self.flat = {"params": torch.cat([_flat(p) for p in self.params])}
        states = [self.opt.state[p] for p in self.params]
        for key in sorted({k for s in states for k, v in s.items()
                           if isinstance(v, torch.Tensor) and k != "step"}):
            self.flat[key] = torch.cat([_flat(s[key]) for s in states])
        self.steps = [(s["step"].item() if isinstance(s["step"], torch.Tensor) else s["step"])
                      if "step" in s else None for s in states]


def _torch_kwargs(kwargs: dict, impl: str) -> dict:
    """kwargs with torch's for-loop ("loop") or its fused / foreach implementation ("other")."""
    kw = {k: v for k, v in kwargs.items() if k not in ("foreach", "fused", "differentiable")}
    if impl == "loop":
        return {**kw, "foreach": False} if "foreach" in kwargs else kw
    return kw


def _other_run(name: str, kwargs: dict, start: Run | None, steps: int) -> Run:
    """torch's fused (where it has one on the CPU) or foreach run of the config: with its
    for-loop, the yardstick of the PARITY rule. A flag torch refuses for this config (foreach
    with a Tensor lr): the for-loop itself (no spread)."""
    info = INFOS[name]
    kw = _torch_kwargs(kwargs, "other")
    for flag in ("fused", "foreach"):
        if flag in info.supported_impls and (
                flag != "fused" or DEVICE in info.supports_fused_on):
            try:
                return Run(getattr(torch.optim, name), name, {**kw, flag: True}, steps, start)
            except (RuntimeError, ValueError):
                continue
    return Run(getattr(torch.optim, name), name, _torch_kwargs(kwargs, "loop"), steps, start)


def _assert_close_to_torch(name: str, kwargs: dict, ours: Run, start: Run | None = None,
                           steps: int = MATRIX_STEPS) -> None:
    """ours vs torch.optim with the same config from the same start, per tests/tolerances.py."""
    torch_cls = getattr(torch.optim, name)
    ref = Run(torch_cls, name, kwargs, steps, start)
    assert ours.flat.keys() == ref.flat.keys()
    assert ours.steps == ref.steps
    family = FAMILY[name]
    if family == "sparse_adam":
        atol, rtol = SPARSE_ADAM_VS_TORCH_MKL[DTYPE]
        for key in ours.flat:
            torch.testing.assert_close(ours.flat[key], ref.flat[key], atol=atol, rtol=rtol,
                                       msg=key)
        return
    loop = Run(torch_cls, name, _torch_kwargs(kwargs, "loop"), steps, start)
    if family == "sgd":
        for key in ours.flat:  # pyoptim's SGD is torch's for-loop, bit for bit where ATen fuses
            torch.testing.assert_close(ours.flat[key].float(), loop.flat[key].float(),
                                       **sgd_tol(DTYPE, steps), msg=f"{key} vs torch's for-loop")
            spread = (ref.flat[key] - loop.flat[key]).abs().max().item()
            bound = sgd_vs_torch_bound(spread, loop.flat[key].abs().max().item(), DTYPE, steps)
            dist = (ours.flat[key] - ref.flat[key]).abs().max().item()
            assert dist <= bound, f"{key}: |pyoptim - torch| = {dist:.3g} > {bound:.3g}"
        return
    other = _other_run(name, kwargs, start, steps)
    tol = parity_tolerance(family, DTYPE)
    for key in ours.flat:
        spread = (other.flat[key] - loop.flat[key]).abs().max().item()
        bound = tol.bound(spread, ref.flat[key].abs().max().item(), DTYPE)
        dist = (ours.flat[key] - ref.flat[key]).abs().max().item()
        assert dist <= bound, (f"{key}: |pyoptim - torch| = {dist:.3g} > {bound:.3g} "
                               f"(torch's own spread {spread:.3g})")


def _groups_without_params(opt) -> list[dict]:
    return [{k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in g.items()
             if k != "params"} for g in opt.param_groups]


# ---- every config --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_config_matches_torch(name, kwargs):
    """torch's test_forloop_goes_right_direction / test_foreach_matches_forloop /
    test_fused_matches_forloop, as parity with torch.optim itself."""
    ours = Run(PYOPTIM[name], name, kwargs)
    assert ours.moved
    theirs = getattr(torch.optim, name)(_params(name, kwargs), **copy.deepcopy(kwargs))
    assert _groups_without_params(ours.opt) == _groups_without_params(theirs)
    _assert_close_to_torch(name, kwargs, ours)


@pytest.mark.parametrize("direction", ["torch-to-pyoptim", "pyoptim-to-torch"])
@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_state_dict_crosses_over(name, kwargs, direction):
    """torch's test_state_dict_deterministic / test_can_load_older_state_dict, across the two
    implementations: a state_dict saved by one loads into the other losslessly, and training
    continues within the tolerance of torch continuing from the same state."""
    _skip_if_torch_skips(name, "test_state_dict_deterministic")
    src_cls, dst_cls = (getattr(torch.optim, name), PYOPTIM[name])
    if direction == "pyoptim-to-torch":
        src_cls, dst_cls = dst_cls, src_cls
    start = Run(src_cls, name, kwargs, steps=CONTINUE_FROM)
    loaded = Run(dst_cls, name, kwargs, steps=0, start=start).loaded
    assert_bitwise_equal(loaded, start.state_dict, "state_dict after load")
    # pyoptim continuing from the state, against torch continuing from it
    ours = Run(PYOPTIM[name], name, kwargs, steps=2, start=start)
    _assert_close_to_torch(name, kwargs, ours, start=start, steps=2)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_step_without_grads_is_a_noop(name, kwargs):
    """torch's test_step_is_noop_when_params_have_no_grad: params and state unchanged (the
    state the constructor made, none but Adagrad's)."""
    _skip_if_torch_skips(name, "test_step_is_noop_when_params_have_no_grad")
    results = []
    for cls in (PYOPTIM[name], getattr(torch.optim, name)):
        params = _params(name, kwargs)
        before = snapshot(params)
        opt = cls(params, **copy.deepcopy(kwargs))
        made = snapshot(opt.state_dict()["state"])
        opt.step()
        assert_bitwise_equal(snapshot(params), before)
        results.append(snapshot(opt.state_dict()["state"]))
        assert_bitwise_equal(results[-1], made)
    assert_bitwise_equal(results[0], results[1])
    assert (results[0] == {}) == (name != "Adagrad")


@pytest.mark.parametrize(("name", "sched"), [(n, k) for n, info in INFOS.items()
                                             for k in range(len(info.scheduler_inputs))])
def test_goes_right_direction_with_schedulers(name, sched):
    """torch's test_param_group_with_lrscheduler_goes_right_direction: each of the OptimizerInfo's
    scheduler inputs (a tuple of LR scheduler makers), on a quadratic, 20 steps: the loss goes
    down (up with maximize) as with torch."""
    info = INFOS[name]
    _skip_if_torch_skips(name, "test_param_group_with_lrscheduler_goes_right_direction")
    losses = {}
    for impl, cls in (("pyoptim", PYOPTIM[name]), ("torch", getattr(torch.optim, name))):
        w = torch.ones(4, 3) * 2.0
        opt = cls([w], lr=0.05)
        schedulers = [make(opt) for make in info.scheduler_inputs[sched]]
        trace = []
        for _ in range(20):
            loss = (w * w).sum()
            trace.append(loss.item())
            g = 2 * w
            w.grad = torch.sparse_coo_tensor(torch.arange(4)[None], g, g.shape) \
                if name == "SparseAdam" else g
            opt.step()
            for s in schedulers:
                if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    s.step(loss.item())
                else:
                    s.step()
        losses[impl] = trace
    assert losses["pyoptim"][-1] < losses["pyoptim"][0]
    assert losses["torch"][-1] < losses["torch"][0]


# ---- errors ------------------------------------------------------------------------------------


def _error_cases():
    out = []
    for name, info in INFOS.items():
        if info.optim_error_inputs_func is None:
            continue
        for k, err in enumerate(info.optim_error_inputs_func(DEVICE, DTYPE)):
            out.append(pytest.param(name, k, id=f"{name}-{k}-{err.optimizer_error_input.desc}"))
    return out


def _raise_like(cls, err) -> BaseException | Warning:
    """Construct (and for a step error, step) as torch's test does; what was raised or warned."""
    inp = err.optimizer_error_input
    params = inp.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3))]
    params = copy.deepcopy(params)
    is_warning = issubclass(err.error_type, Warning)

    def attempt():
        with (pytest.warns(err.error_type, match=err.error_regex) if is_warning else
              pytest.raises(err.error_type, match=err.error_regex)) as info:
            opt = cls(params, **copy.deepcopy(inp.kwargs))
            if err.error_on == OptimizerErrorEnum.STEP_ERROR:
                for p in opt.param_groups[0]["params"]:
                    p.grad = torch.ones_like(p)
                opt.step()
        return info

    info = attempt()
    if is_warning:
        return [str(w.message) for w in info.list if issubclass(w.category, err.error_type)]
    return str(info.value)


@pytest.mark.parametrize(("name", "k"), _error_cases())
def test_error_inputs_raise_torchs_error(name, k):
    """torch's test_errors: each error input raises the error type and message regex torch's
    OptimizerInfo expects, at construction or at step as it says, and pyoptim's message is
    torch's own."""
    err = INFOS[name].optim_error_inputs_func(DEVICE, DTYPE)[k]
    ours = _raise_like(PYOPTIM[name], err)
    theirs = _raise_like(getattr(torch.optim, name), err)
    assert ours == theirs


FUSED = [name for name, info in INFOS.items() if "fused" in info.supported_impls]


@pytest.mark.parametrize("name", FUSED)
def test_fused_error_on_params_on_meta(name):
    """torch's test_fused_error_on_params_on_meta: a model on the meta device with fused=True
    raises torch's error at step(), leaving torch's state; then, the model moved to the CPU
    (to_empty), zero_grad and step() run as torch's do."""
    _skip_if_torch_skips(name, "test_fused_error_on_params_on_meta")
    assert DEVICE in INFOS[name].supports_fused_on
    left = []
    for cls in (PYOPTIM[name], getattr(torch.optim, name)):
        with torch.device("meta"):
            model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(),
                                        torch.nn.Linear(3, 1), torch.nn.Sigmoid())
        opt = cls(model.parameters(), fused=True)
        with torch.device("meta"):
            for p in model.parameters():
                p.grad = torch.rand_like(p)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be "
                           "floating point Tensors") as info:
            opt.step()
        left.append((str(info.value), {k: dict(v) for k, v in opt.state_dict()["state"].items()}))
        opt.zero_grad(set_to_none=True)
        model.to_empty(device=DEVICE)  # new Parameters: the optimizer keeps the meta ones
        for p in model.parameters():
            p.grad = torch.rand_like(p)
        opt.step()  # as torch's test: no error (the meta params have no grads now)
        left.append({k: dict(v) for k, v in opt.state_dict()["state"].items()})
    assert_bitwise_equal(left[:2], left[2:])  # Adagrad's state: made on meta by its constructor


def _bad_params(kind: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    good = [torch.nn.Parameter(torch.randn(3, generator=g)),
            torch.nn.Parameter(torch.randn(2, 2, generator=g))]
    bad = {"complex": torch.nn.Parameter(torch.randn(3, dtype=torch.complex64, generator=g)),
           "int": torch.zeros(3, dtype=torch.int64)}[kind.split("-")[0]]
    return [bad, *good] if kind.endswith("first") else [*good, bad]


@pytest.mark.parametrize("kind", ["complex-first", "complex-last", "int-first", "int-last"])
@pytest.mark.parametrize(("name", "momentum"), [(n, m) for n in FUSED
                                                for m in ((0.0, 0.9) if n == "SGD" else (0.0,))])
def test_fused_error_on_non_floating_params(name, momentum, kind):
    """fused=True with a param that is not floating point: torch's error at step(), and torch's
    state left behind (Note [Fused-flag errors] in pyoptim/adam.py). Params: pyoptim changes
    none (all-or-nothing); torch's fused SGD has updated the params of the dtypes before the
    failing one when the failing param is not the first. torch's fused Adagrad counts the
    failing dtype's steps before its kernel raises; pyoptim counts none."""
    kw = dict(lr=0.1, momentum=momentum) if name == "SGD" else {}
    left = {}
    for impl, cls in (("pyoptim", PYOPTIM[name]), ("torch", getattr(torch.optim, name))):
        params = _bad_params(kind)
        before = snapshot(params)
        opt = cls(params, fused=True, **kw)
        for p in params:
            p.grad = torch.ones_like(p)
        with pytest.raises(Exception) as info:
            opt.step()
        state = [snapshot(dict(opt.state[p])) if p in opt.state else None for p in params]
        left[impl] = (type(info.value), str(info.value), state)
        if impl == "pyoptim":
            assert_bitwise_equal(snapshot(params), before, "pyoptim changed params")
    assert left["pyoptim"][:2] == left["torch"][:2]
    if name == "Adagrad" and kind == "int-last":
        left["torch"][2][-1]["step"] -= 1
    assert_bitwise_equal(left["pyoptim"][2], left["torch"][2], "state left behind")


# ---- more of TestOptimRenewed, per config ------------------------------------------------------


def _configs_without(*flags: str):
    """CONFIGS without the variants torch's test skips (it passes skip= to
    _get_optim_inputs_including_global_cliquey_kwargs)."""
    return [c for c in CONFIGS if not any(c.values[1].get(f) for f in flags)]


COMPLEX = [n for n, info in INFOS.items() if info.supports_complex]


@pytest.mark.parametrize(("name", "kwargs"), [
    c for c in _configs_without("differentiable", "fused") if c.values[0] in COMPLEX])
def test_complex_params_step_as_their_real_views(name, kwargs):
    """torch's test_complex: complex params (and a real one) step exactly as their real views,
    every intermediate step included (the same kernel on the same numbers: bitwise)."""
    g = torch.Generator().manual_seed(0)
    cplx = [torch.randn(10, 5, dtype=torch.complex64, generator=g),
            torch.randn(10, dtype=torch.complex64, generator=g), torch.randn(10, 5, generator=g)]
    real = [torch.view_as_real(p).clone() if p.is_complex() else p.clone() for p in cplx]
    opts = [PYOPTIM[name](ps, **copy.deepcopy(kwargs)) for ps in (cplx, real)]
    for _ in range(3):
        for p, r in zip(cplx, real):
            r.grad = torch.randn(r.shape, generator=g)
            p.grad = torch.view_as_complex(r.grad) if p.is_complex() else r.grad.clone()
        before = snapshot(real)
        for opt in opts:
            opt.step()
        assert all(any_changed([b], [r]) for b, r in zip(before, real))  # every param stepped
        assert_bitwise_equal([torch.view_as_real(p) if p.is_complex() else p for p in cplx],
                             real)


def _rosenbrock(t: torch.Tensor) -> torch.Tensor:
    x, y = t
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize(("name", "kwargs"), [
    c for c in _configs_without("differentiable", "fused") if c.values[0] in COMPLEX])
def test_complex_2d_steps_as_real_and_imag_parts(name, kwargs):
    """torch's test_complex_2d: a complex param steps as its real and imaginary parts given as
    two real params (an elementwise update: bitwise), on |rosenbrock|, 3 steps."""
    _skip_if_torch_skips(name, "test_complex_2d")
    a = torch.randn(2, dtype=torch.complex64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    re, im = (a.real.detach().clone().requires_grad_(), a.imag.detach().clone().requires_grad_())
    opt1 = PYOPTIM[name]([a], **copy.deepcopy(kwargs))
    opt2 = PYOPTIM[name]([re, im], **copy.deepcopy(kwargs))
    for _ in range(3):
        opt1.zero_grad()
        opt2.zero_grad()
        _rosenbrock(a).abs().backward()
        _rosenbrock(torch.complex(re, im)).abs().backward()
        assert_bitwise_equal([a.grad.real, a.grad.imag], [re.grad, im.grad], "grads")
        before = snapshot([re, im])
        opt1.step()
        opt2.step()
        assert any_changed(before, [re, im])  # the step moved the param
        assert_bitwise_equal([a.real, a.imag], [re, im])


@pytest.mark.parametrize(("name", "kwargs"), _configs_without("differentiable"))
def test_tensor_lr(name, kwargs):
    """torch's test_tensor_lr: the config with a Tensor lr constructs where torch's does (else
    the same ValueError) and matches torch.optim with that Tensor lr."""
    _skip_if_torch_skips(name, "test_tensor_lr")
    lr = kwargs.get("lr", 1e-3)
    kw = {**kwargs, "lr": torch.tensor(float(lr))}
    try:
        getattr(torch.optim, name)(_params(name, kw), **copy.deepcopy(kw))
    except ValueError as e:
        with pytest.raises(ValueError, match="lr as a Tensor is not supported") as ours:
            PYOPTIM[name](_params(name, kw), **copy.deepcopy(kw))
        assert str(ours.value) == str(e)
        return
    ours = Run(PYOPTIM[name], name, kw)
    assert ours.moved
    _assert_close_to_torch(name, kw, ours)


def _weight_bias(name: str, seed: int = 0):
    """torch's tests' weight, bias and input, and a closure computing their loss and grads
    (for any equal pair of params: `loss_and_grads(opt, w, b)`)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=g))
    bias = torch.nn.Parameter(torch.randn(10, generator=g))
    x = torch.randn(5, generator=g)

    def loss_and_grads(opt, w=weight, b=bias) -> float:
        opt.zero_grad()
        loss = (w.mv(x) + b).pow(2).sum()
        loss.backward()
        if name == "SparseAdam":  # as torch's tests: its dense grads as sparse ones
            w.grad, b.grad = w.grad.to_sparse(), b.grad.to_sparse()
        return loss.item()

    return weight, bias, loss_and_grads


def _direction_ok(kwargs: dict, first: float, last: float) -> bool:
    return last > first if kwargs.get("maximize") else last < first


@pytest.mark.parametrize(("name", "kwargs"), _configs_without("differentiable"))
def test_param_groups_lr_and_weight_decay(name, kwargs):
    """torch's test_param_groups_lr and test_param_groups_weight_decay: the config as one
    group's options next to a group with a ~0 lr (its params do not move, bit for bit) or with
    weight_decay 0; the loss goes the right direction in 20 steps."""
    kwargs = copy.deepcopy(kwargs)
    if not kwargs.get("lr"):
        kwargs["lr"] = 1e-3
    weight, bias, loss_and_grads = _weight_bias(name)
    irrelevant = torch.nn.Parameter(torch.randn(2))
    frozen = irrelevant.detach().clone()
    opt = PYOPTIM[name]([dict(params=[weight, bias], **kwargs), dict(params=[irrelevant])],
                        lr=1e-28)
    first = loss_and_grads(opt)
    for _ in range(20):
        last = loss_and_grads(opt)
        irrelevant.grad = torch.rand_like(irrelevant)
        if name == "SparseAdam":
            irrelevant.grad = irrelevant.grad.to_sparse()
        opt.step()
    assert _direction_ok(kwargs, first, last)
    assert_bitwise_equal(irrelevant.detach(), frozen)

    weight, bias, loss_and_grads = _weight_bias(name, seed=1)
    no_decay = {**copy.deepcopy(kwargs), "weight_decay": 0.0}
    if name == "SparseAdam":
        no_decay.pop("weight_decay")  # torch's SparseAdam has none (pyoptim's is opt-in)
    opt = PYOPTIM[name]([dict(params=[weight], **copy.deepcopy(kwargs)),
                         dict(params=[bias], **no_decay)])
    first = loss_and_grads(opt)
    for _ in range(20):
        last = loss_and_grads(opt)
        opt.step()
    assert _direction_ok(kwargs, first, last)


@pytest.mark.parametrize(("name", "kwargs"), [  # weight decay moves params (torch skips it too)
    c for c in CONFIGS if c.values[1].get("weight_decay", 0) == 0])
def test_step_is_noop_for_zero_grads(name, kwargs):
    """torch's test_step_is_noop_for_zero_grads: without weight decay a zero grad moves nothing
    (AdamW at lr 1e-5 with its default decay, as torch's test; SparseAdam an empty grad of a
    2-d param, issue 82486): the param does not move, and is torch's, bit for bit."""
    kwargs = copy.deepcopy(kwargs)
    if name == "AdamW":
        kwargs["lr"] = torch.tensor(1e-5) if isinstance(kwargs.get("lr"), torch.Tensor) else 1e-5
    p0 = torch.randn(5, 1, generator=torch.Generator().manual_seed(0))
    after = []
    for cls in (PYOPTIM[name], getattr(torch.optim, name)):
        p = p0.clone().requires_grad_(True)
        if kwargs.get("differentiable"):
            p = p.clone()
        opt = cls([p], **copy.deepcopy(kwargs))
        if name == "SparseAdam":
            p.grad = torch.sparse_coo_tensor(torch.empty(1, 0), torch.empty(0, 1), (5, 1))
        else:
            p.grad = torch.zeros_like(p)
        opt.step(lambda: torch.tensor([1.0]))
        after.append(p.detach().clone())
    assert_bitwise_equal(after[0], after[1])
    if name != "AdamW":  # AdamW's default weight decay moves it (by an ulp or two, as torch's)
        assert_bitwise_equal(after[0], p0)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS)
def test_printing_hooks_deepcopy_and_state(name, kwargs):
    """torch's test_optimizer_can_be_printed, test_step_pre_hook / post_hook / all_hooks,
    test_deepcopy_copies_all_public_attrs and test_non_empty_state."""
    getattr(torch.optim, name)([torch.zeros(1)])  # torch's step is hooked: not twice in ours
    opt = PYOPTIM[name]([torch.tensor([1.0, 1.0])], **copy.deepcopy(kwargs))
    assert repr(opt).startswith(f"{name} (")
    data = []
    handles = [
        register_optimizer_step_pre_hook(lambda *a: data.append(0)),
        register_optimizer_step_post_hook(lambda *a: data.append(5)),
        opt.register_step_pre_hook(lambda *a: data.append(1)),
        opt.register_step_post_hook(lambda *a: data.append(2))]
    try:
        opt.step()
        opt.step()
    finally:
        for h in handles:
            h.remove()
    opt.step()
    assert data == [0, 1, 2, 5] * 2
    if kwargs.get("differentiable"):
        return  # torch's deepcopy and non-empty-state tests leave differentiable out

    model = torch.nn.Linear(5, 5)
    opt = PYOPTIM[name](model.parameters(), **copy.deepcopy(kwargs))
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(2, 5)).sum().backward()
        if name == "SparseAdam":
            for p in model.parameters():
                p.grad = p.grad.to_sparse()
        opt.step()
    assert all(len(s) > 0 for s in opt.state.values())

    def public(o):
        return {k for k in o.__dict__ if not k.startswith("_")}

    assert public(copy.deepcopy(opt)) == public(opt)


@pytest.mark.parametrize("named", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "named-to-plain", "plain-to-named", "named"])
@pytest.mark.parametrize(("name", "kwargs"), _configs_without("differentiable"))
def test_state_dict_deterministic_and_older_state_dicts(name, kwargs, named):
    """torch's test_state_dict_deterministic, test_can_load_from_to_named_state_dict,
    test_save_load_equality_with_weights_only, test_can_load_older_state_dict and
    test_load_nontensor_step: a state_dict loaded into a fresh optimizer over equal params
    continues bit for bit, with or without param names on either side; it survives
    torch.save / torch.load(weights_only=True); without the flags newer than the optimizer
    and with Python-number step counts it loads and steps."""
    weight, bias, loss_and_grads = _weight_bias(name)

    def params(ps, is_named):
        return [(f"name{i}", p) for i, p in enumerate(ps)] if is_named else ps

    opt = PYOPTIM[name](params([weight, bias], named[0]), **copy.deepcopy(kwargs))
    for _ in range(5):
        loss_and_grads(opt)
        opt.step()
    with torch.no_grad():
        weight_c, bias_c = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())
    opt_c = PYOPTIM[name](params([weight_c, bias_c], named[1]), **copy.deepcopy(kwargs))
    opt_c.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(5):
        loss_and_grads(opt)
        opt.step()
        loss_and_grads(opt_c, weight_c, bias_c)
        opt_c.step()
        assert_bitwise_equal([weight_c, bias_c], [weight, bias])

    def without_names(sd):
        sd = copy.deepcopy(sd)
        for g in sd["param_groups"]:
            g.pop("param_names", None)
        return sd

    assert_bitwise_equal(without_names(opt.state_dict()), without_names(opt_c.state_dict()))
    if any(named):
        names = opt_c.state_dict()["param_groups"][0].get("param_names")
        assert names == ["name0", "name1"]

    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    for weights_only in (False, True):
        buf.seek(0)
        assert_bitwise_equal(torch.load(buf, weights_only=weights_only), sd)

    old = copy.deepcopy(opt.state_dict())
    for g in old["param_groups"]:
        for flag in INFOS[name].not_og_supported_flags:
            g.pop(flag, None)
    for s in old["state"].values():
        if isinstance(s.get("step"), torch.Tensor):
            s["step"] = s["step"].item()
    opt.load_state_dict(old)
    before = snapshot([weight, bias])
    loss_and_grads(opt)
    opt.step()
    assert any_changed(before, [weight, bias])


BASE = {name: [c.kwargs for c in info.optim_inputs_func(device=DEVICE)]
        for name, info in INFOS.items()}


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize(("name", "k"), [(n, k) for n, cs in BASE.items()
                                         for k in range(len(cs))])
def test_forloop_goes_right_direction(name, k, contiguous):
    """torch's test_forloop_goes_right_direction (foreach=False, as torch forces it), with and
    without each of the OptimizerInfo's LR scheduler inputs, on contiguous and strided params:
    20 steps of (weight @ x + bias)^2 move the loss the right way."""
    info = INFOS[name]
    for schedulers in [None, *info.scheduler_inputs]:
        kwargs = copy.deepcopy(info.optim_inputs_func(device=DEVICE)[k].kwargs)
        if "foreach" in info.supported_impls:
            kwargs["foreach"] = False
        g = torch.Generator().manual_seed(0)
        if contiguous:
            weight = torch.nn.Parameter(torch.randn(10, 5, generator=g))
            bias = torch.nn.Parameter(torch.randn(10, generator=g))
        else:
            weight = torch.nn.Parameter(torch.randn(10, 5, 2, generator=g)[..., 0])
            bias = torch.nn.Parameter(torch.randn(10, 2, generator=g)[..., 0])
        x = torch.randn(5, generator=g)
        opt = PYOPTIM[name]([weight, bias], **kwargs)
        scheds = [make(opt) for make in (schedulers or ())]

        def closure(opt=opt, weight=weight, bias=bias, x=x):
            opt.zero_grad()
            loss = (weight.mv(x) + bias).pow(2).sum()
            loss.backward()
            if info.only_supports_sparse_grads:
                weight.grad, bias.grad = weight.grad.to_sparse(), bias.grad.to_sparse()
            return loss

        first = closure().item()
        for _ in range(20):
            loss = closure()
            opt.step()
            for s in scheds:
                s.step(loss) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) \
                    else s.step()
        assert _direction_ok(kwargs, first, closure().item())


DERIVED = [(name, flag, dtype) for name, info in INFOS.items() for flag in ("foreach", "fused")
           if flag in info.supported_impls and (flag != "fused" or DEVICE in info.supports_fused_on)
           for dtype in ((torch.float64,) if flag == "foreach" else
                         (torch.float64, torch.float32, torch.bfloat16, torch.float16))]


@pytest.mark.parametrize(("name", "flag", "dtype"), DERIVED,
                         ids=[f"{n}-{f}-{str(d)[6:]}" for n, f, d in DERIVED])
def test_derived_flag_matches_forloop(name, flag, dtype):
    """torch's test_foreach_matches_forloop / test_fused_matches_forloop: the flag on and off,
    every base config, torch's small model plus a 0-dim param, 7 steps with a step without
    grads and a layer frozen for two steps: params and state bit for bit (pyoptim runs the same
    kernel either way), step counts of torch's dtype."""
    for kwargs in BASE[name]:
        runs = []
        for value in (False, True):
            torch.manual_seed(1)
            model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(),
                                        torch.nn.Linear(3, 1), torch.nn.Sigmoid()).to(dtype)
            scalar = torch.empty((), dtype=dtype, requires_grad=True)
            scalar.grad = torch.rand_like(scalar)
            opt = PYOPTIM[name]([*model.parameters(), scalar], **copy.deepcopy(kwargs),
                                **{flag: value})
            x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
            for i in range(7):
                opt.zero_grad()
                if i == 3:
                    model[2].requires_grad_(False)
                if i == 5:
                    model[2].requires_grad_(True)
                if i != 2:
                    model(x).sum().backward()
                opt.step()
            runs.append((snapshot(list(model.parameters())),
                         [snapshot(dict(opt.state[p])) for p in model.parameters()]))
        torch.manual_seed(1)  # the same init again: the runs moved from it
        init = list(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(),
                                        torch.nn.Linear(3, 1)).to(dtype).parameters())
        assert any_changed(init, runs[0][0]), kwargs
        assert_bitwise_equal(runs[0], runs[1], f"{kwargs} {flag}")


SPARSE = [n for n, info in INFOS.items() if info.supports_sparse or info.only_supports_sparse_grads]


def _sparse_configs():
    out = []
    for name in SPARSE:
        info = INFOS[name]
        updates, scheds = info.metadata_for_sparse
        seen = set()
        for cfg in _get_optim_inputs_including_global_cliquey_kwargs(
                DEVICE, torch.float64, info, skip=("differentiable", "fused")):
            kw = {k: v for k, v in cfg.kwargs.items() if k not in updates}
            key = tuple(sorted((k, repr(v)) for k, v in kw.items()))
            if updates and (not kw or key in seen):
                continue
            seen.add(key)
            kw.update({k: v for k, v in updates.items() if k == "lr"} if updates else {})
            for with_sched in ([False, True] if scheds else [False]):
                out.append(pytest.param(name, kw, with_sched,
                                        id=f"{name}-{len(out)}-{cfg.desc}-sched={with_sched}"))
    return out


@pytest.mark.parametrize(("name", "kwargs", "with_sched"), _sparse_configs())
def test_rosenbrock_sparse(name, kwargs, with_sched):
    """torch's test_rosenbrock_sparse: cyclic coordinate descent on Rosenbrock with
    uncoalesced sparse grads (a coordinate's grad split into two duplicates) goes the right
    direction, and equals torch.optim's own run bit for bit (SGD: pyoptim applies duplicates in
    turn as torch does; SparseAdam: torch under ieee_torch_mode, SPARSE_ADAM_VS_TORCH_IEEE;
    Adagrad: torch under ieee_torch_mode, bitwise). SGD
    with the same grads dense equals torch's dense run within sgd_tol."""
    from reference_sparse_adam import ieee_torch_mode

    steps = 1800
    scheds = INFOS[name].metadata_for_sparse[1] if with_sched else []

    def grad_of(p, w, sparse):
        x, y = p.detach()
        full = torch.stack((-400 * x * (y - x**2) - 2 * (1 - x), 200 * (y - x**2)))
        c = full[0] if w else full[1]
        i = torch.tensor([[0, 0]]) if w else torch.tensor([[1, 1]])
        v = torch.stack((c / 4.0, c - c / 4.0) if w else (c - c / 4.0, c / 4.0))
        g = torch.sparse_coo_tensor(i, v, (2,), check_invariants=False)
        return g if sparse else g.to_dense()

    def run(cls, sparse, mode=None):
        p = torch.tensor([1.5, 1.5])
        opt = cls([p], **copy.deepcopy(kwargs))
        ss = [make(opt) for make in scheds]
        for i in range(steps):
            p.grad = grad_of(p, i % 2, sparse)
            if mode is not None:
                with mode():
                    opt.step()
            else:
                opt.step()
            for s in ss:
                s.step(_rosenbrock(p)) if isinstance(
                    s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
        return p

    ours = run(PYOPTIM[name], True)
    start, solution = torch.tensor([1.5, 1.5]), torch.tensor([1.0, 1.0])
    if kwargs.get("maximize"):
        assert _rosenbrock(ours) >= _rosenbrock(start)
    else:
        assert ours.dist(solution) <= start.dist(solution)
    if name == "SparseAdam":
        theirs = run(torch.optim.SparseAdam, True, ieee_torch_mode)
        atol, rtol = SPARSE_ADAM_VS_TORCH_IEEE[torch.float32]
        torch.testing.assert_close(ours, theirs, atol=atol, rtol=rtol)
    else:  # Adagrad's sparse step (sparse_adagrad_) takes an IEEE sqrt: so must torch's
        mode = ieee_torch_mode if name == "Adagrad" else None
        assert_bitwise_equal(ours, run(getattr(torch.optim, name), True, mode))
        torch.testing.assert_close(run(PYOPTIM[name], False), run(getattr(torch.optim, name),
                                                                  False),
                                   **sgd_tol(torch.float32, steps))
