"""pyoptim.SGD, dense gradients: the sgd_ op vs the reference at every ISA level, bitwise
agreement across levels and thread counts, class-level parity with torch.optim.SGD,
state_dict both ways, GradScaler, and errors that leave everything unchanged."""

from __future__ import annotations

import copy

import op_calls
import pytest
import torch
from conftest import ISA_LEVELS
from hypothesis import given
from hypothesis import strategies as st
from reference_sgd import sgd_reference
from tolerances import parity_tolerance, sgd_tol

import pyoptim
from pyoptim import _ops

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# around the vector widths (8 / 16 floats, 4 / 8 doubles) and the 16-element split alignment
SIZES = [0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 257, 1031]


@st.composite
def hyper(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5]))
    return dict(
        lr=draw(st.sampled_from([1e-3, 0.01, 0.1, 1.0])),
        momentum=momentum,
        dampening=dampening,
        weight_decay=draw(st.sampled_from([0.0, 1e-4, 0.1])),
        nesterov=nesterov,
        maximize=draw(st.booleans()),
    )


def _randn(shape, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _op_step(params, grads, bufs, hp, first, grad_scale=None):
    op_calls.sgd_(
        params,
        grads,
        bufs if hp["momentum"] != 0 else [],
        is_first_step=first,
        grad_scale=None if grad_scale is None else torch.tensor(grad_scale),
        **hp,
    )


@given(
    hp=hyper(),
    sizes=st.lists(st.sampled_from(SIZES), min_size=1, max_size=4),
    dtype=st.sampled_from(DTYPES),
    steps=st.integers(1, 3),
    scale=st.sampled_from([None, 1024.0, 3.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_sgd_op_matches_reference(isa, hp, sizes, dtype, steps, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [_randn(n, dtype, gen) for n in sizes]
    start = [p.clone() for p in params]
    ref_p = [p.clone() for p in params]
    bufs = [torch.empty_like(p) for p in params]
    ref_b = [torch.empty_like(p) for p in params]
    for s in range(steps):
        grads = [_randn(n, dtype, gen) for n in sizes]
        _op_step(params, grads, bufs, hp, first=(s == 0), grad_scale=scale)
        for p, g, b in zip(ref_p, grads, ref_b):
            sgd_reference(p, g, b if hp["momentum"] else None, first=(s == 0), grad_scale=scale,
                          **hp)
    for p, r in zip(params, ref_p):
        torch.testing.assert_close(p, r, equal_nan=True, **sgd_tol(dtype, steps))
    if hp["momentum"]:
        for b, r in zip(bufs, ref_b):
            torch.testing.assert_close(b, r, equal_nan=True, **sgd_tol(dtype, steps))
    # the step moved something (lr > 0, random grads; in float32 / float64 even the smallest
    # step, lr = 1e-3 with grads / 1024, exceeds half an ulp; bfloat16 / float16 may round it away)
    if sum(sizes) >= 8 and dtype in (torch.float32, torch.float64):
        assert any(not torch.equal(p, s0) for p, s0 in zip(params, start))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_bitwise_across_isa_and_threads(dtype, nesterov):
    """Every ISA level and thread count gives the same bits (sizes over the threading grain)."""
    gen = torch.Generator().manual_seed(0)
    sizes = [300_001, 17, 65_536 + 5]
    p0 = [_randn(n, dtype, gen) for n in sizes]
    g = [[_randn(n, dtype, gen) for n in sizes] for _ in range(2)]
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=nesterov,
              maximize=False)
    results = []
    old = torch.get_num_threads()
    try:
        for level in ISA_LEVELS:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                with _ops.cpu_capability_override(level):
                    params = [p.clone() for p in p0]
                    bufs = [torch.empty_like(p) for p in p0]
                    for s in range(2):
                        _op_step(params, g[s], bufs, hp, first=(s == 0))
                results.append((level, threads, params, bufs))
    finally:
        torch.set_num_threads(old)
    _, _, p_ref, b_ref = results[0]
    assert not torch.equal(p_ref[0], p0[0])
    for level, threads, params, bufs in results[1:]:
        for a, b in zip(params + bufs, p_ref + b_ref):
            assert torch.equal(a, b), (level, threads)


def test_sgd_momentum_zero_takes_no_buffer():
    """momentum == 0: the op reads and writes no buffer, so it takes none (a buffer given anyway
    is a caller's mistake: ValueError, nothing written)."""
    p = torch.randn(100)
    g = torch.randn(100)
    sentinel = torch.full((100,), 7.0)
    before = p.clone()
    hp = dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, is_first_step=False)
    with pytest.raises(ValueError, match="momentum_buffers"):
        op_calls.sgd_([p], [g], [sentinel], **hp)
    assert torch.equal(p, before) and torch.equal(sentinel, torch.full((100,), 7.0))
    op_calls.sgd_([p], [g], [], **hp)
    assert not torch.equal(p, before)


def test_sgd_noncontiguous_and_transposed():
    gen = torch.Generator().manual_seed(3)
    p = _randn((33, 17), torch.float32, gen).t()  # transposed: dense, not row-major
    g = _randn((17, 33), torch.float32, gen)  # row-major: layouts differ -> copies
    b = torch.empty(17, 33)
    rp, rb = p.clone(), torch.empty(17, 33)
    p0 = p.clone()
    hp = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=True,
              maximize=False)
    _op_step([p], [g], [b], hp, first=True)
    sgd_reference(rp, g, rb, first=True, **hp)
    torch.testing.assert_close(p, rp, **sgd_tol(torch.float32))
    torch.testing.assert_close(b, rb, **sgd_tol(torch.float32))
    assert not torch.equal(p, p0)


# ---- class level -----------------------------------------------------------------------------
# Every flag combination (foreach / fused included) against torch's own run for those flags:
# tests/test_optim_parity.py (test_sgd_every_flag_combination_matches_torch). Here: 200-step runs.

CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, momentum=0.9),
    dict(lr=0.01, momentum=0.9, nesterov=True),
    dict(lr=0.01, momentum=0.9, dampening=0.5),
    dict(lr=0.01, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-2, maximize=True),
    dict(lr=torch.tensor(0.01), momentum=0.5),
]


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    return m.to(dtype)


def _train(model, opt, steps, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 10, generator=gen).to(dtype)
        opt.zero_grad()
        # bounded loss (maximize must not blow up)
        torch.tanh(model(x)).pow(2).mean().backward()
        opt.step()


def _kw_id(kw):
    return ",".join(f"{k}={float(v) if torch.is_tensor(v) else v}" for k, v in kw.items())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kw", CONFIGS, ids=_kw_id)
def test_sgd_class_parity_with_torch(kw):
    """200 steps side by side with torch.optim.SGD's for-loop (same init, same data): float32
    bitwise (sgd_tol)."""
    a, b = _model(), _model()
    start = copy.deepcopy(list(a.parameters()))
    oa = torch.optim.SGD(a.parameters(), **copy.deepcopy(kw), foreach=False)
    ob = pyoptim.SGD(b.parameters(), **copy.deepcopy(kw))
    _train(a, oa, 200)
    _train(b, ob, 200)
    for x, y, s in zip(a.parameters(), b.parameters(), start):
        assert not torch.equal(y, s)
        torch.testing.assert_close(y, x, **sgd_tol(torch.float32, 200))
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    assert sa["param_groups"][0].keys() == sb["param_groups"][0].keys()
    for k in sa["state"]:
        assert sa["state"][k].keys() == sb["state"][k].keys()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kw", [dict(lr=0.01, momentum=0.9),
                                dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-2,
                                     maximize=True)], ids=_kw_id)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_sgd_class_reduced_and_double_precision(dtype, kw):
    """float64: torch's for-loop bit for bit (sgd_tol). bfloat16 / float16: torch's for-loop
    rounds after every op in the param dtype, its fused kernel (like pyoptim) computes in float32
    and rounds once: pyoptim against fused within PARITY["sgd", dtype], whose yardstick is
    torch's own spread |fused - for-loop|."""
    steps = 20
    runs = {}
    for name, make in (("pyoptim", lambda p: pyoptim.SGD(p, **kw)),
                       ("loop", lambda p: torch.optim.SGD(p, **kw, foreach=False)),
                       ("fused", lambda p: torch.optim.SGD(p, **kw, fused=True))):
        m = _model(dtype)
        start = [p.detach().clone() for p in m.parameters()]
        _train(m, make(m.parameters()), steps, dtype=dtype)
        runs[name] = [p.detach().clone() for p in m.parameters()]
    assert any(not torch.equal(p, s) for p, s in zip(runs["pyoptim"], start))
    if dtype == torch.float64:
        for x, y in zip(runs["loop"], runs["pyoptim"]):
            torch.testing.assert_close(y, x, **sgd_tol(dtype, steps))
        return
    flat = {n: torch.cat([p.double().flatten() for p in ps]) for n, ps in runs.items()}
    spread = (flat["fused"] - flat["loop"]).abs().max().item()
    dist = (flat["pyoptim"] - flat["fused"]).abs().max().item()
    bound = parity_tolerance("sgd", dtype).bound(spread, flat["fused"].abs().max().item(), dtype)
    assert dist <= bound, f"|pyoptim - fused| = {dist:.3g} > {bound:.3g} (spread {spread:.3g})"


@pytest.mark.usefixtures("one_thread")
def test_sgd_no_state_without_momentum():
    m = _model()
    opt = pyoptim.SGD(m.parameters(), lr=0.1)
    before = [p.clone() for p in m.parameters()]
    _train(m, opt, 2)
    assert len(opt.state) == 0
    assert opt.state_dict()["state"] == {}
    assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), before))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("direction", ["torch->pyoptim", "pyoptim->torch"])
def test_sgd_state_dict_both_ways(direction):
    kw = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    src_cls, dst_cls = (
        (torch.optim.SGD, pyoptim.SGD) if direction == "torch->pyoptim"
        else (pyoptim.SGD, torch.optim.SGD)
    )
    ref_model = _model()
    ref_opt = torch.optim.SGD(ref_model.parameters(), **kw)
    _train(ref_model, ref_opt, 30)  # 30 uninterrupted torch steps (the oracle)

    m1 = _model()
    o1 = src_cls(m1.parameters(), **kw)
    _train(m1, o1, 10)
    m2 = _model()
    m2.load_state_dict(m1.state_dict())
    o2 = dst_cls(m2.parameters(), **kw)
    o2.load_state_dict(o1.state_dict())
    for i, p in enumerate(m2.parameters()):
        assert torch.equal(o2.state[p]["momentum_buffer"], o1.state_dict()["state"][i][
            "momentum_buffer"])
    # steps 11..30 with the same data as the oracle's
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        torch.randn(16, 10, generator=gen)
    for _ in range(20):
        x = torch.randn(16, 10, generator=gen)
        o2.zero_grad()
        torch.tanh(m2(x)).pow(2).mean().backward()
        o2.step()
    for x, y in zip(ref_model.parameters(), m2.parameters()):
        torch.testing.assert_close(y, x, **sgd_tol(torch.float32, 30))


@pytest.mark.usefixtures("one_thread")
def test_sgd_param_without_grad_then_with_grad():
    """A param whose first grad arrives later gets torch's first-step rule then."""
    torch.manual_seed(0)
    pa = [torch.nn.Parameter(torch.randn(20)) for _ in range(3)]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    late = pb[2].detach().clone()
    oa = torch.optim.SGD(pa, lr=0.1, momentum=0.9)
    ob = pyoptim.SGD(pb, lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(5)
    for step in range(4):
        active = [0, 1] if step < 2 else [0, 1, 2]
        for ps in (pa, pb):
            for p in ps:
                p.grad = None
        for i in active:
            g = torch.randn(20, generator=gen)
            pa[i].grad, pb[i].grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y, x, **sgd_tol(torch.float32, 4))
    assert not torch.equal(pb[2].detach(), late)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("with_inf", [False, True])
def test_sgd_grad_scaler(with_inf):
    """GradScaler: same as torch.optim.SGD with GradScaler (power-of-two scale: exact unscale);
    a step with an inf grad changes nothing and creates no state."""
    results = []
    for cls in (torch.optim.SGD, pyoptim.SGD):
        m = _model()
        opt = cls(m.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        gen = torch.Generator().manual_seed(2)
        before = None
        for step in range(3):
            x = torch.randn(16, 10, generator=gen)
            opt.zero_grad()
            scaler.scale(torch.tanh(m(x)).pow(2).mean()).backward()
            if with_inf and step == 0:
                next(m.parameters()).grad[0, 0] = float("inf")
                before = [p.clone() for p in m.parameters()]
            scaler.step(opt)
            if with_inf and step == 0:
                assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))
                assert all(len(opt.state[p]) == 0 for p in m.parameters())
            scaler.update()
        results.append([p.detach().clone() for p in m.parameters()])
    for x, y in zip(*results):
        torch.testing.assert_close(y, x, **sgd_tol(torch.float32, 3))
    assert not torch.equal(results[1][0], _model()[0].weight.detach())


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(lr=-0.1), "Invalid learning rate: -0.1"),
        (dict(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
        (dict(lr=0.1, weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
        (dict(lr=0.1, nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
        (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
         "Nesterov momentum requires a momentum and zero dampening"),
        (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
    ],
)
def test_sgd_constructor_errors_match_torch(kw, msg):
    for cls in (torch.optim.SGD, pyoptim.SGD):
        with pytest.raises(ValueError, match=msg):
            cls([torch.nn.Parameter(torch.randn(3))], **kw)


def _snapshot(*ts):
    return [t.clone() for t in ts]


@pytest.mark.parametrize(
    "case",
    ["shape", "dtype", "buf_shape", "aliased", "buf_count", "nesterov", "lr"],
)
def test_sgd_op_errors_change_nothing(case):
    p1, p2 = torch.randn(10), torch.randn(5)
    g1, g2 = torch.randn(10), torch.randn(5)
    b1, b2 = torch.randn(10), torch.randn(5)
    snap = _snapshot(p1, p2, b1, b2)
    params, grads, bufs = [p1, p2], [g1, g2], [b1, b2]
    hp = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, is_first_step=False)
    err = ValueError
    if case == "shape":
        grads = [g1, torch.randn(6)]
    elif case == "dtype":
        grads = [g1, g2.double()]
        err = TypeError
    elif case == "buf_shape":
        bufs = [b1, torch.randn(4)]
    elif case == "aliased":
        params = [p1, p1]
        grads = [g1, g1]
        bufs = [b1, b1.clone()]
    elif case == "buf_count":
        bufs = [b1]
    elif case == "nesterov":
        hp.update(nesterov=True, dampening=0.5)
    elif case == "lr":
        hp.update(lr=-1.0)
    with pytest.raises(err):
        op_calls.sgd_(params, grads, bufs, **hp)
    for a, b in zip(snap, (p1, p2, b1, b2)):
        assert torch.equal(a, b)
    # and the same call with valid input does change them (the test can fail)
    op_calls.sgd_([p1, p2], [g1, g2], [b1, b2], **dict(hp, nesterov=False, dampening=0.0, lr=0.1))
    assert not torch.equal(p1, snap[0])
