"""pyoptim.Adamax: the first dense optimizer (Note [Dense optimizers] in
csrc/include/pyoptim/dense.h), against its reference and against torch.optim.Adamax.

  * op level: torch.ops.pyoptim.adamax_ against `adamax_reference` (below), BITWISE, for every
    dtype, flag and ISA level (hypothesis), several groups, GradScaler, bad input;
  * class level: pyoptim.Adamax against torch.optim.Adamax trained side by side, within
    tests/tolerances.py's PARITY rule (torch's own for-loop <-> foreach spread), every flag
    combination torch accepts; state_dicts both ways; torch's errors.

The reference is torch.optim.adamax._single_tensor_adamax's expressions in the kernel's
precision (opmath: float32 for float32 / bfloat16 / float16, float64 for float64), widened on
load and rounded once on store, one torch op per rounding: lerp spelled out with torch's two
formulas (torch's CPU lerp is FMA-contracted, the kernels round every op, as for Adam: see
tests/reference.py), `grad.add(param, alpha=weight_decay)` through torch's own add, which is one
fused multiply-add on AVX2 / AVX-512 builds, as the kernel's vfma (tolerances.sgd_tol: exact
where ATen fuses it), the maximum and `abs + eps` as torch's, `addcdiv` as (value * t1) / t2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import dtype_id
from helpers import any_changed, assert_bitwise_equal, snapshot
from hypothesis import given
from hypothesis import strategies as st
from reference import _lerp, opmath_dtype
from strategies import DTYPES, EDGE_SIZES, seeds
from tolerances import MATRIX_STEPS, parity_tolerance, sgd_tol
from torch import nn
from torch.library import opcheck

import pyoptim

adamax_ = torch.ops.pyoptim.adamax_.default


def adamax_reference(params, grads, exp_avgs, exp_infs, steps, *, lr, beta1, beta2, eps,
                     weight_decay, maximize, grad_scale=None, found_inf=None) -> None:
    """torch.optim.Adamax's single-tensor step in the kernel's precision, in place."""
    if found_inf is not None and float(found_inf) != 0.0:
        return
    for i, param in enumerate(params):
        cd = opmath_dtype(param.dtype)
        p, g = param.to(cd, copy=True), grads[i].to(cd, copy=True)
        exp_avg, exp_inf = exp_avgs[i].to(cd, copy=True), exp_infs[i].to(cd, copy=True)
        if grad_scale is not None:
            g = g / grad_scale.to(cd)
        if maximize:
            g = -g
        steps[i] += 1
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)  # one fused multiply-add on AVX2 / AVX-512
        exp_avg = _lerp(exp_avg, g, 1 - beta1)  # exp_avg.lerp_(grad, 1 - beta1)
        exp_inf = torch.maximum(exp_inf * beta2, g.abs() + eps)
        clr = lr / (1 - beta1 ** float(steps[i]))
        p = p + (exp_avg * -clr) / exp_inf  # param.addcdiv_(exp_avg, exp_inf, value=-clr)
        param.copy_(p)
        exp_avgs[i].copy_(exp_avg)
        exp_infs[i].copy_(exp_inf)


def _groups_args(groups: list[dict]) -> dict:
    """The op's per-group lists for groups of dicts with lr, beta1, beta2, eps, weight_decay,
    maximize (and the group's size n)."""
    return dict(
        group_sizes=[g["n"] for g in groups],
        hyper=[x for g in groups
               for x in (g["lr"], g["beta1"], g["beta2"], g["eps"], g["weight_decay"])],
        flags=[g["maximize"] for g in groups],
        lr_tensors=[],
    )


def _problem(sizes, dtype, seed, step0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(n, scale=1.0):
        return (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype)

    params = [rnd(n) for n in sizes]
    grads = [rnd(n, 0.1) for n in sizes]
    exp_avgs = [rnd(n, 0.01) if step0 else torch.zeros(n, dtype=dtype) for n in sizes]
    exp_infs = [rnd(n, 0.1).abs() if step0 else torch.zeros(n, dtype=dtype) for n in sizes]
    steps = [torch.tensor(float(step0)) for _ in sizes]
    return params, grads, exp_avgs, exp_infs, steps


group_hparams = st.fixed_dictionaries(dict(
    lr=st.sampled_from([1e-3, 2e-3, 0.1]),
    beta1=st.sampled_from([0.0, 0.3, 0.9]),  # 0.3: torch.lerp's other formula
    beta2=st.sampled_from([0.0, 0.5, 0.999]),
    eps=st.sampled_from([1e-8, 1e-3]),
    weight_decay=st.sampled_from([0.0, 0.1]),
    maximize=st.booleans(),
))


@given(dtype=st.sampled_from(DTYPES), hps=st.lists(group_hparams, min_size=1, max_size=2),
       sizes=st.lists(st.sampled_from(EDGE_SIZES), min_size=1, max_size=4),
       seed=seeds, step0=st.sampled_from([0, 3]), amp=st.sampled_from([None, 4.0]),
       steps=st.integers(1, 2))
def test_matches_reference(isa, dtype, hps, sizes, seed, step0, amp, steps):
    """The op equals the reference bit for bit, over several groups and steps (groups take the
    sizes in turn)."""
    groups = [dict(h, n=0) for h in hps]
    for k in range(len(sizes)):
        groups[k % len(groups)]["n"] += 1
    order = sorted(range(len(sizes)), key=lambda k: k % len(groups))  # group by group
    sizes = [sizes[k] for k in order]
    kern = _problem(sizes, dtype, seed, step0)
    ref = _problem(sizes, dtype, seed, step0)
    before = snapshot(kern)
    scale = None if amp is None else torch.tensor(amp)
    for _ in range(steps):
        grads = [g * amp for g in kern[1]] if amp else kern[1]
        p, _, m, v, s = kern
        adamax_(p, grads, m + v, s, **_groups_args(groups), grad_scale=scale)
        start = 0
        for g in groups:
            sl = slice(start, start + g["n"])
            rp, _, rm, rv, rs = (x[sl] for x in ref)
            adamax_reference(rp, [x * amp if amp else x for x in ref[1][sl]], rm, rv, rs,
                             **{k: g[k] for k in ("lr", "beta1", "beta2", "eps", "weight_decay",
                                                  "maximize")}, grad_scale=scale)
            start += g["n"]
    tol = sgd_tol(dtype, steps)  # exact where ATen's add(alpha) is one fused multiply-add
    for key, (a, b) in enumerate(zip(kern, ref)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **tol, equal_nan=True, msg=f"list {key}")
    if any(n > 0 for n in sizes):
        assert any_changed(before[0], kern[0]) or dtype in (torch.bfloat16, torch.float16)
        assert all(int(s) == step0 + steps for s in kern[4])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_levels_and_threads_agree(dtype, restore_num_threads):
    """Every ISA level and thread count gives the same bits (one large tensor, split)."""
    from pyoptim import _ops

    results = []
    for level in _ops.available_cpu_capabilities():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            p, g, m, v, s = _problem([65537 * 3, 33], dtype, 7, 3)
            with _ops.cpu_capability_override(level):
                adamax_(p, g, m + v, s, **_groups_args([dict(
                    lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, maximize=False,
                    n=2)]))
            results.append((p, m, v))
    # the step moved every tensor (levels that all wrote nothing would agree too)
    start = _problem([65537 * 3, 33], dtype, 7, 3)
    assert all(any_changed(x0, x) for x0, x in zip((start[0], start[2], start[3]), results[0]))
    for r in results[1:]:
        assert_bitwise_equal(r, results[0])


def test_found_inf_skips_everything():
    p, g, m, v, s = _problem([9, 17], torch.float32, 1, 2)
    before = snapshot((p, m, v, s))
    adamax_(p, g, m + v, s, **_groups_args([dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
                                                 weight_decay=0.0, maximize=False, n=2)]),
            grad_scale=torch.tensor(2.0), found_inf=torch.tensor(1.0))
    assert_bitwise_equal((p, m, v, s), before)


BAD = {
    "negative-eps": (lambda a: a["hyper"].__setitem__(3, -1.0), ValueError,
                     "Invalid epsilon value"),
    "beta1-is-1": (lambda a: a["hyper"].__setitem__(1, 1.0), ValueError,
                   "Invalid beta parameter at index 0"),
    "short-hyper": (lambda a: a["hyper"].pop(), ValueError, "hyper"),
    "short-flags": (lambda a: a["flags"].pop(), ValueError, "flags"),
    "bad-group-sizes": (lambda a: a.__setitem__("group_sizes", [1]), ValueError, "group_sizes"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_raise_and_change_nothing(name):
    mutate, exc, match = BAD[name]
    p, g, m, v, s = _problem([5, 7], torch.float32, 3, 1)
    args = _groups_args([dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                              maximize=False, n=2)])
    mutate(args)
    before = snapshot((p, m, v, s))
    with pytest.raises(exc, match=match):
        adamax_(p, g, m + v, s, **args)
    assert_bitwise_equal((p, m, v, s), before)


def test_shared_state_and_bad_shapes_raise_and_change_nothing():
    p, g, m, v, s = _problem([5, 7], torch.float32, 3, 1)
    args = _groups_args([dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                              maximize=False, n=2)])
    before = snapshot((p, m, v, s))
    with pytest.raises(ValueError, match="overlap"):
        adamax_(p, g, [m[0], m[1], v[0], m[1]], s, **args)  # exp_inf[1] is exp_avg[1]
    with pytest.raises(ValueError, match="shape"):
        adamax_(p, [g[0], torch.randn(8)], m + v, s, **args)
    with pytest.raises(ValueError, match="non-negative whole number"):
        adamax_(p, g, m + v, [s[0], torch.tensor(-1.0)], **args)
    adamax_(p, g, m + v, s, **args, validate_only=True)
    assert_bitwise_equal((p, m, v, s), before)


def test_opcheck():
    p, g, m, v, s = _problem([5, 33, 0, 7], torch.float32, 5, 3)
    args = _groups_args([
        dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, maximize=False, n=2),
        dict(lr=2e-2, beta1=0.3, beta2=0.99, eps=1e-6, weight_decay=0.1, maximize=True, n=2)])
    result = opcheck(adamax_, (p, g, m + v, s), args)
    assert all(v == "SUCCESS" for v in result.values()), result
    before = snapshot(p)
    adamax_(p, g, m + v, s, **args)
    assert any_changed(before, p)


# ---- class level -------------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _train(make, steps: int = MATRIX_STEPS, sign: float = 1.0):
    model = _mlp()
    opt = make(model.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randn(32, 4, generator=gen)
        opt.zero_grad()
        (sign * ((model(x) - y) ** 2).mean()).backward()
        opt.step()
    return model, opt


FLAGS = {"default": {}, "foreach": dict(foreach=True)}


@pytest.mark.parametrize("lr_kind", ["float-lr", "tensor-lr"])
@pytest.mark.parametrize("impl", list(FLAGS))
@pytest.mark.parametrize("weight_decay", [0.0, 0.1], ids=["wd=0", "wd=0.1"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_every_flag_combination_matches_torch(maximize, weight_decay, impl, lr_kind,
                                              one_thread):
    """Params and state within PARITY (k x torch's own for-loop <-> foreach spread + floor),
    step counts equal."""
    def kw():
        lr = torch.tensor(1e-2) if lr_kind == "tensor-lr" else 1e-2
        return dict(lr=lr, weight_decay=weight_decay, maximize=maximize, **FLAGS[impl])

    sign = -1.0 if maximize else 1.0
    ours, opt = _train(lambda p: pyoptim.Adamax(p, **kw()), sign=sign)
    loop, topt = _train(lambda p: torch.optim.Adamax(p, **dict(kw(), foreach=False)), sign=sign)
    other, _ = _train(lambda p: torch.optim.Adamax(p, **dict(kw(), foreach=True)), sign=sign)
    tol = parity_tolerance("adam", torch.float32)
    init = _mlp()
    for a, b, c, p0 in zip(ours.parameters(), loop.parameters(), other.parameters(),
                           init.parameters()):
        assert not torch.equal(a.detach(), p0.detach())
        spread = (c - b).abs().max().item()
        bound = tol.bound(spread, b.abs().max().item(), torch.float32)
        assert (a - b).abs().max().item() <= bound
    for pa, pb in zip(ours.parameters(), loop.parameters()):
        sa, sb = opt.state[pa], topt.state[pb]
        assert sa.keys() == sb.keys() and float(sa["step"]) == float(sb["step"]) == MATRIX_STEPS
        for key in ("exp_avg", "exp_inf"):
            scale = sb[key].abs().max().item()
            assert (sa[key] - sb[key]).abs().max().item() <= tol.bound(0.0, scale, torch.float32)


def test_state_dicts_load_both_ways():
    """torch -> pyoptim and pyoptim -> torch: training continues as it would have."""
    ref, ref_opt = _train(lambda p: torch.optim.Adamax(p, lr=1e-2, weight_decay=0.1), steps=6)
    for first, second in ((torch.optim.Adamax, pyoptim.Adamax),
                          (pyoptim.Adamax, torch.optim.Adamax)):
        model, opt = _train(lambda p, c=first: c(p, lr=1e-2, weight_decay=0.1), steps=3)
        sd = copy.deepcopy(opt.state_dict())
        opt2 = second(model.parameters(), lr=1e-2, weight_decay=0.1)
        opt2.load_state_dict(sd)
        assert opt2.state_dict()["state"].keys() == sd["state"].keys()
        gen = torch.Generator().manual_seed(9)
        for _ in range(3):
            x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)
            opt2.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt2.step()
        assert float(opt2.state[next(iter(model.parameters()))]["step"]) == 6.0


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(eps=-1.0), dict(betas=(1.0, 0.9)),
                                    dict(weight_decay=-0.1), dict(lr=torch.tensor([1.0, 2.0]))],
                         ids=["lr", "eps", "beta1", "wd", "lr-2-elements"])
def test_constructor_errors_are_torchs(kwargs):
    params = [nn.Parameter(torch.randn(3))]
    errors = []
    for cls in (torch.optim.Adamax, pyoptim.Adamax):
        with pytest.raises(Exception) as info:
            cls(params, **kwargs)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])


def test_sparse_grad_and_capturable_on_cpu_raise_torchs_errors():
    # capturable=True: torch's for-loop and foreach steps list the capturable devices
    # differently (the foreach one without "xla")
    for kw, make_grad in ((dict(), lambda p: torch.randn(4, 3).to_sparse()),
                          (dict(capturable=True), lambda p: torch.randn_like(p)),
                          (dict(capturable=True, foreach=True), lambda p: torch.randn_like(p)),
                          (dict(capturable=True, foreach=False), lambda p: torch.randn_like(p))):
        errors = []
        for cls in (torch.optim.Adamax, pyoptim.Adamax):
            p = nn.Parameter(torch.randn(4, 3))
            p.grad = make_grad(p)
            opt = cls([p], **kw)
            with pytest.raises(Exception) as info:
                opt.step()
            errors.append(info.value)
            if cls is pyoptim.Adamax:
                assert len(opt.state) == 0  # the failed step left no state behind
        assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])


def test_differentiable_falls_back_to_torch(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the native op must not run with differentiable=True")

    monkeypatch.setattr(pyoptim.Adamax, "_op", boom)
    w0 = torch.randn(5)
    res = {}
    for cls in (pyoptim.Adamax, torch.optim.Adamax):
        leaf = w0.clone().requires_grad_(True)
        w = leaf.clone()
        opt = cls([w], lr=1e-2, differentiable=True)
        for _ in range(2):
            w.grad = torch.sin(w.detach())
            opt.step()
        res[cls] = w.detach().clone()
    assert_bitwise_equal(res[pyoptim.Adamax], res[torch.optim.Adamax])


def test_complex_params_step_as_torchs():
    """A complex param steps on its real view, as torch's Adamax does (view_as_real)."""
    gen = torch.Generator().manual_seed(4)
    init = torch.randn(5, 3, dtype=torch.complex64, generator=gen)
    ours, ref = init.clone().requires_grad_(), init.clone().requires_grad_()
    opt = pyoptim.Adamax([ours], lr=0.1, weight_decay=0.1, maximize=True)
    topt = torch.optim.Adamax([ref], lr=0.1, weight_decay=0.1, maximize=True, foreach=False)
    for _ in range(3):
        g = torch.randn(5, 3, dtype=torch.complex64, generator=gen)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    tol = parity_tolerance("adam", torch.float32)
    assert not torch.equal(ours.detach(), init)
    for a, b in [(ours.detach(), ref.detach())] + [(opt.state[ours][k], topt.state[ref][k])
                                                   for k in ("exp_avg", "exp_inf")]:
        assert a.dtype == b.dtype == torch.complex64
        a, b = torch.view_as_real(a), torch.view_as_real(b)
        assert (a - b).abs().max().item() <= tol.bound(0.0, b.abs().max().item(), torch.float32)
