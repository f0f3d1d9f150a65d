"""pyoptim.Adagrad: a dense optimizer (Note [Dense optimizers] in csrc/include/pyoptim/dense.h)
whose sparse gradients step in sparse_adagrad_, against its reference and torch.optim.Adagrad.

  * op level: torch.ops.pyoptim.adagrad_ against `adagrad_reference` (below), BITWISE, for every
    dtype, flag and ISA level (hypothesis), several groups, GradScaler, bad input; CUDA against
    the CPU kernel, bitwise (skipped without a GPU);
  * class level: pyoptim.Adagrad against torch.optim.Adagrad trained side by side, within
    tests/tolerances.py's PARITY rule (torch's own for-loop <-> foreach / fused spread), every
    flag combination torch accepts; state made in the constructor as torch makes it; state_dicts
    both ways; torch's errors, fused=True's included;
  * sparse grads next to dense ones: torch's bits (torch's sqrt pinned to IEEE's), the steps
    left to torch's own (GradScaler) and torch's errors with nothing changed; the sparse op
    itself: tests/test_adagrad_sparse.py.

The reference is torch.optim.adagrad._single_tensor_adagrad's expressions in the kernel's
precision (opmath: float32 for float32 / bfloat16 / float16, float64 for float64), widened on
load and rounded once on store: `grad.add(param, alpha=weight_decay)` and
`state_sum.addcmul_(grad, grad, value=1)` through torch's own ops, each one fused multiply-add on
AVX2 / AVX-512 builds as the kernel's vfma (tolerances.sgd_tol: exact where ATen fuses them), an
IEEE sqrt (reference._sqrt: torch's CPU sqrt is not correctly rounded), `addcdiv` as
(value * t1) / t2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import dtype_id
from helpers import any_changed, assert_bitwise_equal, snapshot
from hypothesis import given
from hypothesis import strategies as st
from reference import _sqrt, opmath_dtype
from strategies import DTYPES, EDGE_SIZES, seeds
from tolerances import MATRIX_STEPS, parity_tolerance, sgd_tol
from torch import nn
from torch.library import opcheck

import pyoptim
from tests.reference_sparse_adam import ieee_torch_mode

adagrad_ = torch.ops.pyoptim.adagrad_.default
HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (none visible)")
HYPER = ("lr", "lr_decay", "weight_decay", "eps")


def adagrad_reference(params, grads, sums, steps, *, lr, lr_decay, weight_decay, eps, maximize,
                      grad_scale=None, found_inf=None) -> None:
    """torch.optim.Adagrad's single-tensor step (dense grads) in the kernel's precision, in
    place."""
    if found_inf is not None and float(found_inf) != 0.0:
        return
    for i, param in enumerate(params):
        cd = opmath_dtype(param.dtype)
        p, g, s = (t.to(cd, copy=True) for t in (param, grads[i], sums[i]))
        if grad_scale is not None:
            g = g / grad_scale.to(cd)
        steps[i] += 1
        step = float(steps[i])
        if maximize:
            g = -g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)  # one fused multiply-add on AVX2 / AVX-512
        clr = lr / (1 + (step - 1) * lr_decay)
        s.addcmul_(g, g, value=1)  # one fused multiply-add on AVX2 / AVX-512
        std = _sqrt(s) + eps
        p = p + (g * -clr) / std  # param.addcdiv_(grad, std, value=-clr)
        param.copy_(p)
        sums[i].copy_(s)


def _groups_args(groups: list[dict]) -> dict:
    """The op's per-group lists for groups of dicts with HYPER, maximize and the size n."""
    return dict(group_sizes=[g["n"] for g in groups],
                hyper=[g[k] for g in groups for k in HYPER],
                flags=[g["maximize"] for g in groups], lr_tensors=[])


def _problem(sizes, dtype, seed, step0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)

    def rnd(n, scale=1.0):
        return (torch.randn(n, generator=gen, dtype=torch.float64) * scale).to(dtype)

    params = [rnd(n) for n in sizes]
    grads = [rnd(n, 0.1) for n in sizes]
    sums = [rnd(n, 0.1).abs() if step0 else torch.zeros(n, dtype=dtype) for n in sizes]
    steps = [torch.tensor(float(step0)) for _ in sizes]
    return tuple([t.to(device) for t in ts] for ts in (params, grads, sums)) + (steps,)


ONE_GROUP = [dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, eps=1e-10, maximize=False, n=2)]

group_hparams = st.fixed_dictionaries(dict(
    lr=st.sampled_from([1e-2, 0.1]),
    lr_decay=st.sampled_from([0.0, 0.5]),
    weight_decay=st.sampled_from([0.0, 0.1]),
    eps=st.sampled_from([1e-10, 1e-3]),
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
    sizes = [sizes[k] for k in sorted(range(len(sizes)), key=lambda k: k % len(groups))]
    kern = _problem(sizes, dtype, seed, step0)
    ref = _problem(sizes, dtype, seed, step0)
    before = snapshot(kern)
    scale = None if amp is None else torch.tensor(amp)
    for _ in range(steps):
        p, g, s, n = kern
        adagrad_(p, [x * amp for x in g] if amp else g, s, n, **_groups_args(groups),
                 grad_scale=scale)
        start = 0
        for grp in groups:
            sl = slice(start, start + grp["n"])
            rp, rg, rs, rn = (x[sl] for x in ref)
            adagrad_reference(rp, [x * amp for x in rg] if amp else rg, rs, rn,
                              **{k: grp[k] for k in (*HYPER, "maximize")}, grad_scale=scale)
            start += grp["n"]
    tol = sgd_tol(dtype, steps)  # exact where ATen's add(alpha) / addcmul are fused
    for key, (a, b) in enumerate(zip(kern, ref)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **tol, equal_nan=True, msg=f"list {key}")
    if any(n > 0 for n in sizes):
        assert any_changed(before[0], kern[0]) or dtype in (torch.bfloat16, torch.float16)
        assert all(int(s) == step0 + steps for s in kern[3])


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_levels_and_threads_agree(dtype, restore_num_threads):
    """Every ISA level and thread count gives the same bits (one large tensor, split)."""
    from pyoptim import _ops

    results = []
    for level in _ops.available_cpu_capabilities():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            p, g, s, n = _problem([65537 * 3, 33], dtype, 7, 3)
            with _ops.cpu_capability_override(level):
                adagrad_(p, g, s, n, **_groups_args(ONE_GROUP))
            results.append((p, s))
    # the step moved param and sum (levels that all wrote nothing would agree too)
    p0, _, s0, _ = _problem([65537 * 3, 33], dtype, 7, 3)
    assert any_changed(p0, results[0][0]) and any_changed(s0, results[0][1])
    for r in results[1:]:
        assert_bitwise_equal(r, results[0])


def test_found_inf_skips_everything():
    p, g, s, n = _problem([9, 17], torch.float32, 1, 2)
    before = snapshot((p, s, n))
    adagrad_(p, g, s, n, **_groups_args(ONE_GROUP), grad_scale=torch.tensor(2.0),
             found_inf=torch.tensor(1.0))
    assert_bitwise_equal((p, s, n), before)


BAD = {
    "negative-lr_decay": (lambda a: a["hyper"].__setitem__(1, -0.5), ValueError,
                          "Invalid lr_decay value: -0.5"),
    "negative-eps": (lambda a: a["hyper"].__setitem__(3, -1.0), ValueError,
                     "Invalid epsilon value"),
    "short-hyper": (lambda a: a["hyper"].pop(), ValueError, "hyper"),
    "short-flags": (lambda a: a["flags"].pop(), ValueError, "flags"),
    "bad-group-sizes": (lambda a: a.__setitem__("group_sizes", [1]), ValueError, "group_sizes"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_raise_and_change_nothing(name):
    mutate, exc, match = BAD[name]
    p, g, s, n = _problem([5, 7], torch.float32, 3, 1)
    args = _groups_args(ONE_GROUP)
    mutate(args)
    before = snapshot((p, s, n))
    with pytest.raises(exc, match=match):
        adagrad_(p, g, s, n, **args)
    assert_bitwise_equal((p, s, n), before)


def test_shared_state_sparse_grads_and_bad_shapes_raise_and_change_nothing():
    p, g, s, n = _problem([5, 7], torch.float32, 3, 1)
    args = _groups_args(ONE_GROUP)
    before = snapshot((p, s, n))
    with pytest.raises(ValueError, match="overlap"):
        adagrad_(p, g, [s[0], p[1]], n, **args)  # sum[1] is param[1]
    with pytest.raises(ValueError, match="shape"):
        adagrad_(p, [g[0], torch.randn(8)], s, n, **args)
    with pytest.raises(NotImplementedError, match="SparseCPU"):  # no sparse kernel
        adagrad_(p, [g[0], g[1].to_sparse()], s, n, **args)
    with pytest.raises(ValueError, match="non-negative whole number"):
        adagrad_(p, g, s, [n[0], torch.tensor(-1.0)], **args)
    adagrad_(p, g, s, n, **args, validate_only=True)
    assert_bitwise_equal((p, s, n), before)


def test_opcheck():
    p, g, s, n = _problem([5, 33, 0, 7], torch.float32, 5, 3)
    args = _groups_args([
        dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10, maximize=False, n=2),
        dict(lr=2e-2, lr_decay=0.1, weight_decay=0.1, eps=1e-6, maximize=True, n=2)])
    result = opcheck(adagrad_, (p, g, s, n), args)
    assert all(v == "SUCCESS" for v in result.values()), result
    before = snapshot(p)
    adagrad_(p, g, s, n, **args)
    assert any_changed(before, p)


# ---- CUDA: the CPU kernel is the reference -----------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("step_device", ["cpu", "cuda"])
@pytest.mark.parametrize("amp", [None, 1024.0], ids=["no-amp", "grad_scale"])
def test_cuda_matches_cpu_bitwise(dtype, step_device, amp):
    """Host or device step counts (fused=True keeps them on the device: the coefficients are
    computed there, in double, with no pow): the same bits as the CPU kernel."""
    sizes = [1, 3, 4, 7, 8, 33, 1000, 65536 * 3 + 17]
    groups = [dict(lr=0.1, lr_decay=0.5, weight_decay=0.1, eps=1e-10, maximize=False, n=4),
              dict(lr=0.05, lr_decay=0.0, weight_decay=0.0, eps=1e-3, maximize=True, n=4)]
    cpu = _problem(sizes, dtype, 11, 2)
    gpu = _problem(sizes, dtype, 11, 2, device="cuda")
    gpu = gpu[:3] + ([t.to(step_device) for t in gpu[3]],)
    for (p, g, s, n), dev in ((cpu, "cpu"), (gpu, "cuda")):
        for _ in range(3):
            scale = None if amp is None else torch.tensor(amp, device=dev)
            adagrad_(p, [x * amp for x in g] if amp else g, s, n, **_groups_args(groups),
                     grad_scale=scale)
    for a, b in zip(cpu[:3], gpu[:3]):
        assert_bitwise_equal(a, [t.cpu() for t in b])
    assert [float(x) for x in gpu[3]] == [5.0] * len(sizes)


@needs_gpu
def test_cuda_float32_device_step_stays_at_2_pow_24():
    """A float32 count stays at 2**24 (torch's `step_t += 1`, the host's next_step_count), so a
    device-mode step from 2**24 takes the coefficients of one from 2**24 - 1: both count 2**24.
    (The kernel once computed clr from 2**24 + 1: a different clr, visible in float64.)"""
    groups = [dict(lr=0.1, lr_decay=0.5, weight_decay=0.0, eps=1e-10, maximize=False, n=1)]
    out = []
    for start in (2.0**24 - 1, 2.0**24):
        gen = torch.Generator().manual_seed(0)
        p, g, s = (torch.rand(1000, generator=gen, dtype=torch.float64).cuda() for _ in range(3))
        n = torch.tensor(start, dtype=torch.float32, device="cuda")
        adagrad_([p], [g], [s], [n], **_groups_args(groups))
        assert n.item() == 2.0**24
        out.append(p.cpu())
    assert_bitwise_equal(out[1], out[0], "param")


@needs_gpu
def test_cuda_class_matches_cpu_class():
    """pyoptim.Adagrad on CUDA with fused=True (step counts on the device) and on the CPU, fed
    the same grads: the same bits."""
    results = []
    for device, fused in (("cpu", None), ("cuda", True)):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to(device).requires_grad_()
                  for s in ((16, 8), (16,), (70000,))]
        opt = pyoptim.Adagrad(params, lr=0.1, lr_decay=0.1, weight_decay=0.01,
                              initial_accumulator_value=0.1, fused=fused)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).to(device)
            opt.step()
        assert opt.state[params[0]]["step"].device.type == device
        results.append(snapshot([p.detach().cpu() for p in params]
                                + [opt.state[p]["sum"].cpu() for p in params]))
    assert_bitwise_equal(results[0], results[1])


# ---- class level -------------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _train(make, steps: int = MATRIX_STEPS, sign: float = 1.0, model=None):
    model = _mlp() if model is None else model
    opt = make(model.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randn(32, 4, generator=gen)
        opt.zero_grad()
        (sign * ((model(x) - y) ** 2).mean()).backward()
        opt.step()
    return model, opt


FLAGS = {"default": {}, "foreach": dict(foreach=True), "fused": dict(fused=True)}


@pytest.mark.parametrize("lr_kind", ["float-lr", "tensor-lr"])
@pytest.mark.parametrize("impl", list(FLAGS))
@pytest.mark.parametrize("extra", [dict(), dict(weight_decay=0.1, lr_decay=0.5),
                                   dict(initial_accumulator_value=0.1, weight_decay=0.1)],
                         ids=["plain", "wd-lr_decay", "init-acc"])
@pytest.mark.parametrize("maximize", [False, True], ids=["min", "max"])
def test_every_flag_combination_matches_torch(maximize, extra, impl, lr_kind, one_thread):
    """Params and state within PARITY (k x torch's own for-loop <-> fused spread + floor),
    step counts equal."""
    def kw():
        lr = torch.tensor(0.1) if lr_kind == "tensor-lr" else 0.1
        return dict(lr=lr, maximize=maximize, **extra, **FLAGS[impl])

    sign = -1.0 if maximize else 1.0
    ours, opt = _train(lambda p: pyoptim.Adagrad(p, **kw()), sign=sign)
    ref, ref_opt = _train(lambda p: torch.optim.Adagrad(p, **kw()), sign=sign)
    plain = {k: v for k, v in kw().items() if k not in ("foreach", "fused")}
    loop, _ = _train(lambda p: torch.optim.Adagrad(p, **plain, foreach=False), sign=sign)
    other, _ = _train(lambda p: torch.optim.Adagrad(p, **plain, fused=True), sign=sign)
    tol = parity_tolerance("adam", torch.float32)
    init = _mlp()
    for a, b, c, d, p0 in zip(ours.parameters(), ref.parameters(), loop.parameters(),
                              other.parameters(), init.parameters()):
        assert not torch.equal(a.detach(), p0.detach())
        spread = (d - c).abs().max().item()
        bound = tol.bound(spread, b.abs().max().item(), torch.float32)
        assert (a - b).abs().max().item() <= bound
    for pa, pb in zip(ours.parameters(), ref.parameters()):
        sa, sb = opt.state[pa], ref_opt.state[pb]
        assert sa.keys() == sb.keys() == {"step", "sum"}
        assert sa["step"].dtype == sb["step"].dtype and sa["step"].device == sb["step"].device
        assert float(sa["step"]) == float(sb["step"]) == MATRIX_STEPS
        scale = sb["sum"].abs().max().item()
        assert (sa["sum"] - sb["sum"]).abs().max().item() <= tol.bound(0.0, scale, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_equals_torchs_fused_cpu_kernel(isa, dtype):
    """torch's fused CPU Adagrad computes the same expressions with the same roundings (IEEE
    sqrt, fused add(alpha) and addcmul where ATen fuses them: sgd_tol), so pyoptim's step equals
    it bit for bit on such builds, at every dtype and ISA level (measured on torch 2.14, AVX2)."""
    steps = 5
    res = []
    for cls in (pyoptim.Adagrad, torch.optim.Adagrad):
        g = torch.Generator().manual_seed(0)
        ps = [torch.randn(n, generator=g).to(dtype) for n in (7, 100, 4099)]
        opt = cls([dict(params=ps[:2]), dict(params=ps[2:], lr=torch.tensor(0.05), eps=1e-3)],
                  lr=0.1, lr_decay=0.3, weight_decay=0.1, maximize=True,
                  initial_accumulator_value=0.2, fused=True)
        for _ in range(steps):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g).to(dtype)
            opt.step()
        res.append([*ps, *(opt.state[p]["sum"] for p in ps)])
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, **sgd_tol(dtype, steps))


@pytest.mark.parametrize("fused", [None, True])
def test_state_is_made_as_torch_makes_it(fused):
    """In the constructor, for every param (complex ones included); for a param added later, on
    its first step, from the optimizer's default initial_accumulator_value, as torch does."""
    def make(cls):
        g = torch.Generator().manual_seed(0)
        params = [nn.Parameter(torch.randn(3, 2, generator=g)),
                  nn.Parameter(torch.randn(4, dtype=torch.complex64, generator=g))]
        late = nn.Parameter(torch.randn(5, generator=g))
        opt = cls(params, initial_accumulator_value=0.25, fused=fused)
        made = snapshot(opt.state_dict())
        opt.add_param_group(dict(params=[late], initial_accumulator_value=7.0))
        late.grad = torch.ones_like(late)
        opt.step()
        return made, snapshot(opt.state_dict())

    assert_bitwise_equal(make(pyoptim.Adagrad), make(torch.optim.Adagrad))


def test_state_dicts_load_both_ways():
    """torch -> pyoptim and pyoptim -> torch: training continues as it would have."""
    kw = dict(lr=0.1, lr_decay=0.1, weight_decay=0.1)
    for first, second in ((torch.optim.Adagrad, pyoptim.Adagrad),
                          (pyoptim.Adagrad, torch.optim.Adagrad)):
        model, opt = _train(lambda p, c=first: c(p, **kw), steps=3)
        sd = copy.deepcopy(opt.state_dict())
        opt2 = second(model.parameters(), **kw)
        opt2.load_state_dict(sd)
        assert_bitwise_equal(opt2.state_dict(), sd)
        _train(lambda p, o=opt2: o, steps=3, model=model)
        assert float(opt2.state[next(iter(model.parameters()))]["step"]) == 6.0


@pytest.mark.parametrize("kwargs", [
    dict(lr=-1.0), dict(lr_decay=-0.5), dict(weight_decay=-0.1),
    dict(initial_accumulator_value=-1.0), dict(eps=-1.0), dict(lr=torch.tensor([1.0, 2.0])),
    dict(fused=True, foreach=True), dict(fused=True, differentiable=True)],
    ids=["lr", "lr_decay", "wd", "init-acc", "eps", "lr-2-elements", "fused-foreach",
         "fused-differentiable"])
def test_constructor_errors_are_torchs(kwargs):
    params = [nn.Parameter(torch.randn(3))]
    errors = []
    for cls in (torch.optim.Adagrad, pyoptim.Adagrad):
        with pytest.raises(Exception) as info:
            cls(params, **kwargs)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])


def _bad_params(kind: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    good = [nn.Parameter(torch.randn(3, generator=g)), nn.Parameter(torch.randn(2, 2, generator=g))]
    bad = {"complex": nn.Parameter(torch.randn(3, dtype=torch.complex64, generator=g)),
           "int": torch.zeros(3, dtype=torch.int64)}[kind.split("-")[0]]
    return [bad, *good] if kind.endswith("first") else [*good, bad]


@pytest.mark.parametrize("kind", ["complex-first", "complex-last", "int-first", "int-last"])
def test_fused_errors_are_torchs_and_change_nothing(kind):
    """fused=True: torch checks the first param with a grad (`_device_dtype_check_for_fused`),
    then its fused step refuses complex params, then its kernel a dtype it lacks. pyoptim raises
    the same error and changes nothing (torch's kernel error comes after it has counted the
    failing dtype's steps)."""
    errors = []
    for cls in (torch.optim.Adagrad, pyoptim.Adagrad):
        params = _bad_params(kind)
        opt = cls(params, fused=True)
        for p in params:
            p.grad = torch.ones_like(p)
        before = snapshot((params, opt.state_dict()))
        with pytest.raises(Exception) as info:
            opt.step()
        errors.append((type(info.value), str(info.value)))
        if cls is pyoptim.Adagrad:
            assert_bitwise_equal(snapshot((params, opt.state_dict())), before)
    assert errors[0] == errors[1]


def test_differentiable_falls_back_to_torch(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the native op must not run with differentiable=True")

    monkeypatch.setattr(pyoptim.Adagrad, "_op", boom)
    w0 = torch.randn(5)
    res = {}
    for cls in (pyoptim.Adagrad, torch.optim.Adagrad):
        w = w0.clone().requires_grad_(True).clone()
        opt = cls([w], lr=1e-2, differentiable=True)
        for _ in range(2):
            w.grad = torch.sin(w.detach())
            opt.step()
        res[cls] = w.detach().clone()
    assert_bitwise_equal(res[pyoptim.Adagrad], res[torch.optim.Adagrad])


def test_complex_params_step_as_torchs():
    """A complex param steps on its real view, as torch's Adagrad does (view_as_real)."""
    gen = torch.Generator().manual_seed(4)
    init = torch.randn(5, 3, dtype=torch.complex64, generator=gen)
    ours, ref = init.clone().requires_grad_(), init.clone().requires_grad_()
    kw = dict(lr=0.1, weight_decay=0.1, maximize=True, initial_accumulator_value=0.1)
    opt = pyoptim.Adagrad([ours], **kw)
    topt = torch.optim.Adagrad([ref], **kw, foreach=False)
    for _ in range(3):
        g = torch.randn(5, 3, dtype=torch.complex64, generator=gen)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    tol = parity_tolerance("adam", torch.float32)
    assert not torch.equal(ours.detach(), init)
    for a, b in ((ours.detach(), ref.detach()), (opt.state[ours]["sum"], topt.state[ref]["sum"])):
        assert a.dtype == b.dtype == torch.complex64
        a, b = torch.view_as_real(a), torch.view_as_real(b)
        assert (a - b).abs().max().item() <= tol.bound(0.0, b.abs().max().item(), torch.float32)


def test_grad_scaler_matches_unscaled_steps():
    """GradScaler hands the kernel its scale (a power of two: unscaling is exact) and found_inf:
    the same bits as unscaled steps; a step with an inf grad changes nothing."""
    runs = []
    for amp in (False, True):
        model = _mlp()
        opt = pyoptim.Adagrad(model.parameters(), lr=0.1, weight_decay=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        gen = torch.Generator().manual_seed(1)
        for k in range(4):
            x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 4, generator=gen)
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            if not amp:
                loss.backward()
                if k != 2:
                    opt.step()
                continue
            scaler.scale(loss).backward()
            if k == 2:
                before = snapshot((list(model.parameters()), opt.state_dict()))
                next(model.parameters()).grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            if k == 2:
                after = snapshot((list(model.parameters()), opt.state_dict()))
                assert_bitwise_equal(after, before)
        runs.append(snapshot((list(model.parameters()), opt.state_dict())))
    assert any_changed(snapshot(list(_mlp().parameters())), runs[0][0])  # the steps stepped
    assert_bitwise_equal(runs[1], runs[0])


# ---- sparse grads --------------------------------------------------------------------------------

def _embedding_run(cls, kwargs_per_group, steps=4, sparse=(True, True), scaler=None,
                   pin=False):
    """Two groups: an nn.Embedding with a sparse (or dense) grad and a Linear."""
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3, sparse=sparse[0])
    lin = nn.Linear(3, 2)
    groups = [dict(params=list(emb.parameters()), **kwargs_per_group[0]),
              dict(params=list(lin.parameters()), **kwargs_per_group[1])]
    opt = cls(groups, lr=0.1)
    gen = torch.Generator().manual_seed(2)
    for k in range(steps):
        emb.sparse = sparse[k % len(sparse)]
        idx = torch.randint(0, 10, (6,), generator=gen)
        opt.zero_grad()
        loss = lin(emb(idx)).pow(2).sum()
        if scaler is None:
            loss.backward()
            if pin:  # torch's own code with IEEE sqrt (tests/reference_sparse_adam.py)
                with ieee_torch_mode():
                    opt.step()
            else:
                opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return snapshot((list(emb.parameters()) + list(lin.parameters()), opt.state_dict()))


@pytest.mark.parametrize("flags", [dict(), dict(foreach=True), dict(maximize=True, lr_decay=0.1)],
                         ids=["default", "foreach", "maximize-lr_decay"])
def test_sparse_grads_step_as_torchs(flags):
    """Sparse, dense and alternating sparse / dense embedding grads (the same params with and
    without a sparse grad: the plan of a dense step must not be reused for a sparse one),
    next to a dense group with weight decay: torch's bits, with torch's sqrt pinned to IEEE's
    (sparse_adagrad_ steps the sparse grads, adagrad_ the dense ones, in the same step)."""
    groups = (flags, dict(weight_decay=0.1, **flags))
    for sparse in ((True,), (False, True), (True, False)):
        ours = _embedding_run(pyoptim.Adagrad, groups, sparse=sparse)
        theirs = _embedding_run(torch.optim.Adagrad, groups, sparse=sparse, pin=True)
        if sparse == (True,):
            assert_bitwise_equal(ours, theirs)
            continue
        tol = parity_tolerance("adam", torch.float32)  # the dense steps are the kernel's
        for a, b in zip(ours[0], theirs[0]):
            assert (a - b).abs().max().item() <= tol.bound(0.0, b.abs().max().item(),
                                                           torch.float32)


def test_sparse_grads_under_grad_scaler_step_as_torchs():
    """fused=False: torch.optim.Adagrad is not GradScaler-aware, so GradScaler unscales its grads
    in place and skips a step with inf grads; pyoptim's sparse step does the same."""
    runs = [_embedding_run(cls, ({}, {}), scaler=torch.amp.GradScaler("cpu", init_scale=256.0))
            for cls in (pyoptim.Adagrad, torch.optim.Adagrad)]
    assert_bitwise_equal(runs[0], runs[1])


@pytest.mark.parametrize("case", ["weight_decay", "fused", "amp-to-fused", "grad-dtype"])
def test_sparse_step_errors_are_torchs_and_change_nothing(case):
    """torch raises these after it has stepped the groups before (weight_decay: and counted the
    failing param's step); pyoptim raises the same error (grad-dtype: of the same type, in its
    own words) before anything is written."""
    errors = []
    for cls in (torch.optim.Adagrad, pyoptim.Adagrad):
        dense = nn.Parameter(torch.randn(4, 3))
        sparse = nn.Parameter(torch.randn(4, 3))
        late = nn.Parameter(torch.randn(2))  # no state until its first step
        second = dict(weight_decay=0.1) if case == "weight_decay" else {}
        kw = dict(fused=True) if case == "fused" else {}
        if case == "amp-to-fused":  # GradScaler's attributes reach torch's non-fused group
            opt = cls([dict(params=[dense], fused=True), dict(params=[sparse], fused=False)],
                      fused=True)
            opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(0.0)
        else:
            opt = cls([dict(params=[dense]), dict(params=[sparse], **second)], **kw)
        opt.add_param_group(dict(params=[late]))
        dense.grad = torch.randn(4, 3)
        sparse.grad = torch.randn(4, 3).to_sparse()
        if case == "grad-dtype":  # a complex grad: torch's addcmul_ into a real sum raises
            late.grad_dtype = None
        late.grad = torch.randn(2, dtype=torch.complex64 if case == "grad-dtype" else None)
        before = snapshot(([dense, sparse, late], opt.state_dict()))
        with pytest.raises(Exception) as info:
            opt.step()
        errors.append((type(info.value), str(info.value)))
        if cls is pyoptim.Adagrad:
            assert_bitwise_equal(snapshot(([dense, sparse, late], opt.state_dict())), before)
            assert late not in opt.state
    if case == "grad-dtype":
        assert errors[0][0] is errors[1][0] is RuntimeError
    else:
        assert errors[0] == errors[1]
