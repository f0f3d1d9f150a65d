"""The mixed-precision modes: float32 master weights (adam_, sgd_ with momentum) and stochastic
rounding (adam_) (Note [Master weights and stochastic rounding] in
csrc/include/pyoptim/math/stochastic_round.h).

Op level, bitwise against tests/reference_mixed.py at every ISA level and thread count;
statistics of the stochastic rounding; the optimizer classes' flags, errors and checkpoints
(a resumed run continues bit for bit; torch.optim loads a pyoptim checkpoint and the other way).
"""

from __future__ import annotations

import copy
import io
import math

import op_calls
import pytest
import torch
from conftest import ISA_LEVELS, dtype_id
from helpers import any_changed, assert_bitwise_equal, names_matching, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_mixed import (
    KAHAN_SPECIAL_LR,
    adam_kahan_reference,
    adam_master_reference,
    adam_sr_reference,
    assert_kahan_special,
    kahan_special_case,
)
from reference_sgd import sgd_reference
from strategies import adam_hparams

import pyoptim
from pyoptim import _ops

SIZES = [1, 7, 16, 33, 65, 129, 4099]
THREADS = (1, 2, 3)
HALF_DTYPES = [torch.bfloat16, torch.float16]


def _tensors(sizes, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g) * scale).to(dtype) for n in sizes]


def master_case(sizes, dtype, seed, amsgrad, step0=0):
    params = _tensors(sizes, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    masters = [p.float() + torch.randn(p.shape, generator=g) * 1e-3 for p in params]
    m = [torch.randn(n, generator=g) * 0.1 for n in sizes]
    v = [torch.rand(n, generator=g) * 0.01 for n in sizes]
    x = [t + torch.rand(t.shape, generator=g) * 0.01 for t in v] if amsgrad else []
    steps = [torch.tensor(float(step0)) for _ in sizes]
    return dict(params=params, masters=masters, exp_avgs=m, exp_avg_sqs=v, max_exp_avg_sqs=x,
                state_steps=steps)


def sr_case(sizes, seed, amsgrad, step0=0):
    params = _tensors(sizes, torch.bfloat16, seed)
    g = torch.Generator().manual_seed(seed + 1)
    m = [(torch.randn(n, generator=g) * 0.1).bfloat16() for n in sizes]
    v = [(torch.rand(n, generator=g) * 0.01).bfloat16() for n in sizes]
    x = [(t.float() + 0.01).bfloat16() for t in v] if amsgrad else []
    steps = [torch.tensor(float(step0)) for _ in sizes]
    seeds = [torch.tensor(s, dtype=torch.int64) for s in (7, -3, 2**62 + 5, 0, 1, 99, 12345)]
    return dict(params=params, exp_avgs=m, exp_avg_sqs=v, max_exp_avg_sqs=x, state_steps=steps,
                sr_seeds=seeds[:len(sizes)])


def clone(state):
    return {k: [t.clone() for t in v] for k, v in state.items()}


def run_master_op(state, grads, hp):
    op_calls.adam_(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                   state["max_exp_avg_sqs"], state["state_steps"], master_params=state["masters"],
                   **hp)


def run_sr_op(state, grads, hp):
    op_calls.adam_(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                   state["max_exp_avg_sqs"], state["state_steps"], sr_seeds=state["sr_seeds"],
                   **hp)


def run_master_ref(state, grads, hp):
    adam_master_reference(state["params"], grads, state["masters"], state["exp_avgs"],
                          state["exp_avg_sqs"], state["max_exp_avg_sqs"], state["state_steps"],
                          **hp)


def run_sr_ref(state, grads, hp):
    return adam_sr_reference(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                             state["max_exp_avg_sqs"], state["state_steps"],
                             [int(s) for s in state["sr_seeds"]], **hp)


_hp = op_calls.adam_hp


FLAGS = {
    "adamw": _hp(),
    "adam-l2-amsgrad": _hp(decoupled=False, amsgrad=True, weight_decay=0.1),
    "maximize-no-wd": _hp(maximize=True, weight_decay=0.0),
}


# ---- op level, bitwise against the reference ---------------------------------------------------

@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_master_matches_reference(isa, dtype, flags):
    hp = FLAGS[flags]
    state = master_case(SIZES, dtype, seed=1, amsgrad=hp["amsgrad"], step0=4)
    ref = clone(state)
    for k in range(3):
        grads = _tensors(SIZES, dtype, seed=100 + k)
        run_master_op(state, grads, hp)
        run_master_ref(ref, grads, hp)
    assert_bitwise_equal(state, ref, f"{isa}")
    assert all(m.dtype == torch.float32 for m in state["masters"] + state["exp_avgs"])


@pytest.mark.parametrize("flags", list(FLAGS))
def test_sr_matches_reference(isa, flags):
    hp = FLAGS[flags]
    state = sr_case(SIZES, seed=2, amsgrad=hp["amsgrad"], step0=9)
    ref = clone(state)
    for k in range(3):
        grads = _tensors(SIZES, torch.bfloat16, seed=200 + k)
        run_sr_op(state, grads, hp)
        run_sr_ref(ref, grads, hp)
    assert_bitwise_equal(state, ref, f"{isa}")


@settings(max_examples=max(1, settings().max_examples // 2))
@given(hp=adam_hparams(), seed=st.integers(0, 2**20), scale=st.sampled_from([1e-3, 1.0, 10.0]),
       amp=st.sampled_from([None, 2.0**16, 3.0]))
def test_modes_match_reference_hypothesis(hp, seed, scale, amp):
    """Drawn hyper-parameters and grad magnitudes (GradScaler's scale too), every level."""
    extra = {} if amp is None else dict(grad_scale=torch.tensor(amp))
    sizes = [3, 17, 40]
    m0 = master_case(sizes, torch.bfloat16, seed, hp["amsgrad"], step0=1)
    s0 = sr_case(sizes, seed, hp["amsgrad"], step0=1)
    grads = _tensors(sizes, torch.bfloat16, seed + 9, scale * (amp or 1.0))
    mref, sref = clone(m0), clone(s0)
    run_master_ref(mref, grads, {**hp, **extra})
    run_sr_ref(sref, grads, {**hp, **extra})
    for level in ISA_LEVELS:
        with _ops.cpu_capability_override(level):
            m, s = clone(m0), clone(s0)
            run_master_op(m, grads, {**hp, **extra})
            run_sr_op(s, grads, {**hp, **extra})
        assert_bitwise_equal(m, mref, f"master {level}")
        assert_bitwise_equal(s, sref, f"sr {level}")


@pytest.mark.parametrize("mode", ["master", "sr"])
def test_levels_and_threads_agree(restore_num_threads, mode):
    """One tensor far above the parallel grain plus small ones: thread splits fall inside
    tensors; every (level, threads) gives the reference's bits."""
    sizes = [300_007, 5, 1000]
    hp = _hp(amsgrad=True)
    make = (lambda: master_case(sizes, torch.bfloat16, 3, True)) if mode == "master" else (
        lambda: sr_case(sizes, 3, True))
    run_op = run_master_op if mode == "master" else run_sr_op
    state0 = make()
    grads = _tensors(sizes, torch.bfloat16, 33)
    ref = clone(state0)
    (run_master_ref if mode == "master" else run_sr_ref)(ref, grads, hp)
    for level in ISA_LEVELS:
        for threads in THREADS:
            torch.set_num_threads(threads)
            state = clone(state0)
            with _ops.cpu_capability_override(level):
                run_op(state, grads, hp)
            assert_bitwise_equal(state, ref, f"{level} x {threads} threads")


def test_master_noncontiguous_layouts(isa):
    """A transposed param with a row-major master: the op steps a row-major copy."""
    p = torch.randn(33, 17).bfloat16().t()
    state = dict(params=[p], masters=[p.float().contiguous()],
                 exp_avgs=[torch.zeros(17, 33)], exp_avg_sqs=[torch.zeros(17, 33)],
                 max_exp_avg_sqs=[], state_steps=[torch.tensor(0.0)])
    ref = dict(params=[p.clone()], masters=[p.float()], exp_avgs=[torch.zeros(17, 33)],
               exp_avg_sqs=[torch.zeros(17, 33)], max_exp_avg_sqs=[],
               state_steps=[torch.tensor(0.0)])
    grads = [torch.randn(17, 33).bfloat16()]
    run_master_op(state, grads, _hp())
    run_master_ref(ref, grads, _hp())
    assert_bitwise_equal(state, ref)


# ---- stochastic rounding: special values and statistics ------------------------------------------

def _sr_one_step(param: torch.Tensor, grad: torch.Tensor, seed: int, **kw):
    """One stochastically rounded step of a single param, op and reference; returns
    (result, reference result, float32 value before rounding)."""
    hp = _hp(lr=kw.pop("lr", 1e-2), weight_decay=0.0, **kw)
    state = dict(params=[param.clone()], exp_avgs=[torch.zeros_like(param)],
                 exp_avg_sqs=[torch.zeros_like(param)], max_exp_avg_sqs=[],
                 state_steps=[torch.tensor(0.0)], sr_seeds=[torch.tensor(seed)])
    ref = clone(state)
    run_sr_op(state, [grad], hp)
    p32 = run_sr_ref(ref, [grad], hp)[0]
    return state["params"][0], ref["params"][0], p32


def test_sr_special_values(isa):
    """NaN is stored as rounding to nearest stores it; infinity stays; the largest finite
    bfloat16 pushed up rounds to itself or to infinity; exact values never move."""
    big = torch.finfo(torch.bfloat16).max
    param = torch.tensor([float("nan"), float("inf"), -float("inf"), big, -big, 1.0, 0.0] * 40,
                         dtype=torch.bfloat16)
    grad = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, 0.0, 0.0] * 40, dtype=torch.bfloat16)
    got, ref, _ = _sr_one_step(param, grad, seed=11, lr=1e36)
    assert_bitwise_equal(got, ref)
    g = got.view(40, 7)
    assert (g[:, 0].view(torch.int16) == 0x7FC0).all()
    assert torch.isinf(g[:, 1]).all() and (g[:, 1] > 0).all()
    assert torch.isinf(g[:, 2]).all() and (g[:, 2] < 0).all()
    for col, sign in ((3, 1.0), (4, -1.0)):  # +-max + lr-sized push: max or inf, both seen
        vals = g[:, col].float() * sign
        assert ((vals == big) | (vals == math.inf)).all()
        assert (vals == big).any() and (vals == math.inf).any()
    assert (g[:, 5] == 1.0).all() and (g[:, 6] == 0.0).all()  # no update: exact, unmoved


@pytest.mark.parametrize("fraction_exp", [1, 4, 10])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sr_is_unbiased(fraction_exp, sign):
    """N = 2^16 elements of one value x, fixed seed, one step: each element rounds to lo or
    hi = lo + ulp, hi with probability f = (x - lo) / ulp. For independent uniform bits the
    count of hi is Binomial(N, f): mean N f, standard deviation sqrt(N f (1 - f)). The test
    allows 6 standard deviations (+1 for the discreteness): a correct generator exceeds it with
    probability < 2e-9, and the seed is fixed, so the result never changes between runs."""
    n = 1 << 16
    x0 = sign * 1.0  # bfloat16 ulp at 1 is 2^-7
    # the update: lr * m / (sqrt(v) + eps) with one step is lr * sign(g): choose lr = ulp * 2^-k
    lr = 2.0**-7 * 2.0**-fraction_exp * 1.37
    param = torch.full((n,), x0, dtype=torch.bfloat16)
    grad = torch.full((n,), -sign, dtype=torch.bfloat16)  # the step adds +sign * lr
    got, ref, p32 = _sr_one_step(param, grad, seed=20261202 + fraction_exp, lr=lr)
    assert_bitwise_equal(got, ref)
    x = p32[0].item()
    lo = x0
    ulp = 2.0**-7  # |x| in [1, 2): the bfloat16 spacing there
    f = abs(x - lo) / ulp
    assert 0 < f < 1
    hi_count = (got.float() != lo).sum().item()
    assert ((got.float() == lo) | (got.float() == lo + sign * ulp)).all()
    expected, sd = n * f, math.sqrt(n * f * (1 - f))
    assert abs(hi_count - expected) <= 6 * sd + 1, (hi_count, expected, sd)


def test_sr_streams_differ_by_step_and_seed():
    """Same value, same elements: another step or another seed draws other bits (a correlated
    stream would repeat the same rounding pattern)."""
    n = 4096
    param = torch.full((n,), 1.0, dtype=torch.bfloat16)
    grad = torch.full((n,), -1.0, dtype=torch.bfloat16)
    a, _, _ = _sr_one_step(param, grad, seed=1, lr=2.0**-8)
    b, _, _ = _sr_one_step(param, grad, seed=2, lr=2.0**-8)
    assert not torch.equal(a, b)
    # agreement of two independent patterns with p = 1/2: n/2 +- 6 sqrt(n)/2
    same = (a == b).sum().item()
    assert abs(same - n / 2) <= 6 * math.sqrt(n) / 2 + 1


# ---- op-level bad input ------------------------------------------------------------------------

def _bad_master_args():
    p = [torch.randn(8).bfloat16()]
    return dict(params=p, grads=[torch.randn(8).bfloat16()], exp_avgs=[torch.zeros(8)],
                exp_avg_sqs=[torch.zeros(8)], max_exp_avg_sqs=[], state_steps=[torch.tensor(0.)],
                master_params=[p[0].float()])


BAD = {
    "master-fp32-param": (lambda a: a.update(params=[torch.randn(8)], grads=[torch.randn(8)]),
                          ValueError, "master_weights is for bfloat16 and float16"),
    "master-dtype": (lambda a: a.update(master_params=[torch.zeros(8).bfloat16()]), TypeError,
                     "master_params"),
    "master-shape": (lambda a: a.update(master_params=[torch.zeros(9)]), ValueError,
                     "master_params"),
    "master-count": (lambda a: a.update(master_params=[]), ValueError, "master_params"),
    "moment-dtype": (lambda a: a.update(exp_avgs=[torch.zeros(8).bfloat16()]), TypeError,
                     "exp_avgs"),
    "sr-on-fp16": (lambda a: a.update(params=[torch.randn(8).half()], grads=[torch.randn(8).half()],
                                      exp_avgs=[torch.zeros(8).half()],
                                      exp_avg_sqs=[torch.zeros(8).half()], master_params=None,
                                      sr_seeds=[torch.tensor(1)]),
                   ValueError, "stochastic_rounding is for bfloat16"),
    "seed-dtype": (lambda a: a.update(exp_avgs=[torch.zeros(8).bfloat16()],
                                      exp_avg_sqs=[torch.zeros(8).bfloat16()], master_params=None,
                                      sr_seeds=[torch.tensor(1.0)]),
                   TypeError, "int64"),
    "both": (lambda a: a.update(sr_seeds=[torch.tensor(1)]), ValueError, "cannot be combined"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_writes_nothing(case):
    args = _bad_master_args()
    mutate, exc, match = BAD[case]
    mutate(args)
    before = snapshot(args)
    master = args.pop("master_params")
    seeds = args.pop("sr_seeds", None)
    flags = [False, False, True, master is not None, seeds is not None, False, False, False]
    with pytest.raises(exc, match=match):
        torch.ops.pyoptim.adam_.default(
            args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"],
            args["max_exp_avg_sqs"], args["state_steps"], [1], [1e-2, 0.9, 0.999, 0.0, 1e-8],
            flags, [], None, None, False, master or [], seeds or [])
    args["master_params"] = master
    if seeds is not None:
        args["sr_seeds"] = seeds
    assert_bitwise_equal(args, before)


# ---- optimizer classes ---------------------------------------------------------------------------

def _model(dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype)) for n in (37, 64, 5)]


def _set_grads(params, k):
    g = torch.Generator().manual_seed(1000 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.mark.parametrize("cls", [pyoptim.Adam, pyoptim.AdamW])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_optimizer_master_matches_reference(cls, dtype):
    params = _model(dtype)
    opt = cls(params, lr=1e-2, weight_decay=0.05, amsgrad=True, master_weights=True)
    decoupled = cls is pyoptim.AdamW
    ref_p = [p.detach().clone() for p in params]
    ref_master = [p.float() for p in ref_p]
    ref_m = [torch.zeros_like(m) for m in ref_master]
    ref_v = [torch.zeros_like(m) for m in ref_master]
    ref_x = [torch.zeros_like(m) for m in ref_master]
    ref_steps = [torch.tensor(0.0) for _ in params]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.05, eps=1e-8, amsgrad=True,
              maximize=False, decoupled=decoupled)
    for k in range(4):
        _set_grads(params, k)
        opt.step()
        adam_master_reference(ref_p, [p.grad for p in params], ref_master, ref_m, ref_v, ref_x,
                              ref_steps, **hp)
    for i, p in enumerate(params):
        st_ = opt.state[p]
        assert_bitwise_equal(p.detach(), ref_p[i])
        assert_bitwise_equal(st_["master_param"], ref_master[i])
        assert_bitwise_equal(st_["exp_avg"], ref_m[i])
        assert_bitwise_equal(st_["max_exp_avg_sq"], ref_x[i])


def test_optimizer_sr_matches_reference():
    torch.manual_seed(5)
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, stochastic_rounding=True)
    ref = dict(params=[p.detach().clone() for p in params],
               exp_avgs=[torch.zeros_like(p) for p in params],
               exp_avg_sqs=[torch.zeros_like(p) for p in params], max_exp_avg_sqs=[],
               state_steps=[torch.tensor(0.0) for _ in params])
    for k in range(3):
        _set_grads(params, k)
        opt.step()
        ref["sr_seeds"] = [opt.state[p]["sr_seed"] for p in params]
        run_sr_ref(ref, [p.grad for p in params], _hp(lr=1e-3))
    for i, p in enumerate(params):
        assert opt.state[p]["sr_seed"].dtype == torch.int64
        assert_bitwise_equal(p.detach(), ref["params"][i])
        assert_bitwise_equal(opt.state[p]["exp_avg"], ref["exp_avgs"][i])


@pytest.mark.parametrize("mode", ["master_weights", "stochastic_rounding"])
def test_checkpoint_resume_is_bitwise(mode):
    """k steps, state_dict through torch.save / torch.load, a fresh optimizer (and model)
    loads it and continues: the same bits as the uninterrupted run."""
    torch.manual_seed(0)
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, amsgrad=True, **{mode: True})
    for k in range(6):
        _set_grads(params, k)
        opt.step()
    straight = [p.detach().clone() for p in params]

    torch.manual_seed(0)
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, amsgrad=True, **{mode: True})
    for k in range(3):
        _set_grads(params, k)
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    torch.manual_seed(123)  # another generator state: the seeds must come from the checkpoint
    params2 = [torch.nn.Parameter(t.clone()) for t in ckpt["model"]]
    opt2 = pyoptim.AdamW(params2, lr=1e-3, amsgrad=True, **{mode: True})
    opt2.load_state_dict(ckpt["opt"])
    for p in params2:
        st_ = opt2.state[p]
        if mode == "master_weights":
            for key in ("master_param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                assert st_[key].dtype == torch.float32, key
        else:
            assert st_["sr_seed"].dtype == torch.int64 and st_["sr_seed"].device.type == "cpu"
            assert st_["exp_avg"].dtype == torch.bfloat16
    for k in range(3, 6):
        _set_grads(params2, k)
        opt2.step()
    # the resumed steps moved the params (a step that wrote nothing would agree too)
    assert any_changed(ckpt["model"], [p.detach() for p in params2])
    for a, b in zip(params2, straight):
        assert_bitwise_equal(a.detach(), b)


@pytest.mark.parametrize("mode", ["master_weights", "stochastic_rounding"])
def test_torch_optim_loads_pyoptim_checkpoint(mode):
    """torch.optim.AdamW loads a pyoptim checkpoint: torch's keys as torch saves them, the extra
    keys (master_param, sr_seed, the groups' flags) ignored by its step."""
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, **{mode: True})
    _set_grads(params, 0)
    opt.step()
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq",
                                   "master_param" if mode == "master_weights" else "sr_seed"}
    assert all(s["exp_avg"].any() for s in sd["state"].values())  # what the step wrote
    params_t = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = torch.optim.AdamW(params_t, lr=1e-3)
    topt.load_state_dict(sd)
    _set_grads(params_t, 1)
    topt.step()
    assert all(torch.isfinite(p).all() for p in params_t)
    assert topt.state[params_t[0]]["exp_avg"].dtype == torch.bfloat16


def test_master_loads_torch_checkpoint():
    """A torch.optim checkpoint (bfloat16 moments, no master) into master_weights: the moments
    become float32, the master is made from the param at the next step."""
    params = _model()
    topt = torch.optim.AdamW(params, lr=1e-3)
    _set_grads(params, 0)
    topt.step()
    sd = topt.state_dict()
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = pyoptim.AdamW(params2, lr=1e-3, master_weights=True)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["master_weights"] is True
    assert opt.state[params2[0]]["exp_avg"].dtype == torch.float32
    loaded = snapshot(params2)
    _set_grads(params2, 1)
    opt.step()
    assert any_changed(loaded, params2)  # the step ran on the loaded state
    st_ = opt.state[params2[0]]
    assert st_["master_param"].dtype == torch.float32
    assert_bitwise_equal(params2[0].detach(), st_["master_param"].bfloat16())


@pytest.mark.parametrize("cls, kwargs, key", [
    (pyoptim.AdamW, dict(master_weights=True), "master_param"),
    (pyoptim.AdamW, dict(master_weights=True), "exp_avg"),
    (pyoptim.SGD, dict(momentum=0.9, master_weights=True), "momentum_buffer"),
    (pyoptim.AdamW, dict(stochastic_rounding=True), "sr_seed"),
], ids=["adamw-master", "adamw-master-moment", "sgd-master-buffer", "adamw-sr-seed"])
def test_load_state_dict_hooks_see_and_keep_pyoptim_state(cls, kwargs, key):
    """load_then (pyoptim/_state.py): the master, the float32 moments and the seed are
    taken from the state dict as the load pre-hooks left it, before the post-hooks run. They
    were taken again from the dict given to load_state_dict after torch's load had returned: a
    pre-hook's change was lost, the post-hooks saw torch's cast (a bfloat16 master, a seed as a
    bfloat16 float) and their changes were overwritten."""
    p = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
                           .bfloat16())
    opt = cls([p], lr=0.1, **kwargs)
    p.grad = torch.randn(4, 3, generator=torch.Generator().manual_seed(1)).bfloat16()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    dtype = sd["state"][0][key].dtype
    assert dtype in (torch.float32, torch.int64)

    def pre(o, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["state"][0][key] = torch.full_like(state_dict["state"][0][key], 7)
        return state_dict

    seen = []

    def post(o):
        seen.append(o.state[p][key].clone())
        o.state[p][key] = o.state[p][key] + 1

    opt.register_load_state_dict_pre_hook(pre)
    opt.register_load_state_dict_post_hook(post)
    opt.load_state_dict(sd)
    assert_bitwise_equal(seen[0], torch.full((4, 3) if key != "sr_seed" else (), 7, dtype=dtype))
    assert_bitwise_equal(opt.state[p][key], seen[0] + 1)


ERRORS = {
    "master-on-fp32": (dict(master_weights=True), torch.float32, "bfloat16 or float16"),
    "master-on-fp64": (dict(master_weights=True), torch.float64, "bfloat16 or float16"),
    "sr-on-fp16": (dict(stochastic_rounding=True), torch.float16, "needs bfloat16"),
    "sr-on-fp32": (dict(stochastic_rounding=True), torch.float32, "needs bfloat16"),
    "both": (dict(master_weights=True, stochastic_rounding=True), torch.bfloat16,
             "cannot be combined"),
    "differentiable": (dict(master_weights=True, differentiable=True), torch.bfloat16,
                       "differentiable"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_combinations_raise_at_construction(case):
    kw, dtype, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        pyoptim.AdamW(_model(dtype), **kw)


def test_add_param_group_checks_and_defaults():
    opt = pyoptim.Adam(_model(), master_weights=True)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3).half())],
                         "master_weights": True})
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "master_weights": False})
    assert [g["master_weights"] for g in opt.param_groups] == [True, True, False]
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()  # one call, groups of every mode
    assert "master_param" not in opt.state[opt.param_groups[2]["params"][0]]


def test_default_is_torchs_behaviour():
    params = _model()
    opt = pyoptim.AdamW(params)
    # the flags are stored only when on: torch's defaults and param groups exactly
    assert opt.defaults == torch.optim.AdamW(_model()).defaults
    assert set(opt.param_groups[0]) == set(torch.optim.AdamW(_model()).param_groups[0])
    _set_grads(params, 0)
    opt.step()
    assert set(opt.state[params[0]]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16


# ---- SGD with momentum and master weights --------------------------------------------------------

SGD_FLAGS = op_calls.SGD_MOMENTUM_FLAGS


def sgd_master_reference(params, grads, masters, bufs, first: bool, **hp) -> None:
    """float32 SGD (tests/reference_sgd.py) on the master, then the param rounded to nearest."""
    for p, g, m, b in zip(params, grads, masters, bufs):
        sgd_reference(m, g.float(), b, first=first, **hp)
        p.copy_(m)


def sgd_master_case(sizes, dtype, seed):
    params = _tensors(sizes, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    masters = [p.float() + torch.randn(p.shape, generator=g) * 1e-3 for p in params]
    bufs = [torch.zeros(n) for n in sizes]
    return dict(params=params, masters=masters, bufs=bufs)


@pytest.mark.parametrize("flags", list(SGD_FLAGS))
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_sgd_master_matches_reference(isa, dtype, flags):
    hp = SGD_FLAGS[flags]
    state = sgd_master_case(SIZES, dtype, seed=4)
    ref = clone(state)
    for k in range(3):
        grads = _tensors(SIZES, dtype, seed=400 + k)
        op_calls.sgd_(state["params"], grads, state["bufs"], is_first_step=k == 0,
                      master_params=state["masters"], **hp)
        sgd_master_reference(ref["params"], grads, ref["masters"], ref["bufs"], k == 0, **hp)
    assert_bitwise_equal(state, ref, f"{isa}")


def test_sgd_master_threads_agree(restore_num_threads):
    sizes = [300_007, 9]
    hp = SGD_FLAGS["nesterov-wd"]
    state0 = sgd_master_case(sizes, torch.bfloat16, 6)
    grads = _tensors(sizes, torch.bfloat16, 66)
    ref = clone(state0)
    sgd_master_reference(ref["params"], grads, ref["masters"], ref["bufs"], True, **hp)
    for level in ISA_LEVELS:
        for threads in THREADS:
            torch.set_num_threads(threads)
            state = clone(state0)
            with _ops.cpu_capability_override(level):
                op_calls.sgd_(state["params"], grads, state["bufs"], is_first_step=True,
                              master_params=state["masters"], **hp)
            assert_bitwise_equal(state, ref, f"{level} x {threads} threads")


def test_sgd_master_bad_input_writes_nothing():
    p = [torch.randn(8).bfloat16()]
    bufs = [torch.zeros(8).bfloat16()]  # must be float32 in a master group
    masters = [p[0].float()]
    before = snapshot([p, bufs, masters])
    hp = SGD_FLAGS["momentum"]
    with pytest.raises(TypeError, match="momentum_buffers"):
        op_calls.sgd_(p, [torch.randn(8).bfloat16()], bufs, is_first_step=False,
                      master_params=masters, **hp)
    with pytest.raises(ValueError, match="without momentum"):
        op_calls.sgd_(p, [torch.randn(8).bfloat16()], [], is_first_step=False,
                      master_params=masters, **dict(hp, momentum=0.0))
    sparse = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2), (8,)).bfloat16()
    with pytest.raises(ValueError, match="dense grads"):
        op_calls.sgd_(p, [sparse], [torch.zeros(8)], is_first_step=False, master_params=masters,
                      **hp)
    assert_bitwise_equal([p, bufs, masters], before)


def test_optimizer_sgd_master_matches_reference_and_resumes():
    params = _model(torch.bfloat16)
    opt = pyoptim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01,
                      master_weights=True)
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
              maximize=False)
    ref_p = [p.detach().clone() for p in params]
    ref_m = [p.float() for p in ref_p]
    ref_b = [torch.zeros_like(m) for m in ref_m]
    for k in range(3):
        _set_grads(params, k)
        opt.step()
        sgd_master_reference(ref_p, [p.grad for p in params], ref_m, ref_b, k == 0, **hp)
    for i, p in enumerate(params):
        assert_bitwise_equal(p.detach(), ref_p[i])
        assert_bitwise_equal(opt.state[p]["master_param"], ref_m[i])
        assert_bitwise_equal(opt.state[p]["momentum_buffer"], ref_b[i])
    # resume: a fresh optimizer from the checkpoint continues bit for bit
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = pyoptim.SGD(params2, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01,
                       master_weights=True)
    opt2.load_state_dict(torch.load(buf))
    assert opt2.state[params2[0]]["momentum_buffer"].dtype == torch.float32
    for k in range(3, 5):
        _set_grads(params, k)
        _set_grads(params2, k)
        opt.step()
        opt2.step()
    for a, b in zip(params, params2):
        assert_bitwise_equal(a.detach(), b.detach())
    # torch.optim.SGD loads it (the buffer cast to bfloat16, master_param ignored)
    topt = torch.optim.SGD([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.05,
                           momentum=0.9, nesterov=True, weight_decay=0.01)
    topt.load_state_dict(opt.state_dict())
    topt.step()


SGD_ERRORS = {
    "master-no-momentum": (dict(master_weights=True), torch.bfloat16, ValueError, "momentum"),
    "master-on-fp32": (dict(master_weights=True, momentum=0.9), torch.float32, ValueError,
                       "bfloat16 or float16"),
    "sr-and-master": (dict(stochastic_rounding=True, master_weights=True, momentum=0.9),
                      torch.bfloat16, ValueError, "cannot be combined"),
}


@pytest.mark.parametrize("case", list(SGD_ERRORS))
def test_sgd_bad_combinations_raise_at_construction(case):
    kw, dtype, exc, match = SGD_ERRORS[case]
    with pytest.raises(exc, match=match):
        pyoptim.SGD(_model(dtype), lr=0.1, **kw)


def test_sr_tracks_float32_where_round_to_nearest_stalls():
    """Updates below half a bfloat16 ulp: rounded to nearest, a bfloat16 param never moves;
    stochastically rounded, its mean over N elements follows the float32 run. With a constant
    grad, Adam's update is -lr * m_hat / (sqrt(v_hat) + eps), the same every step (to float32
    rounding) whatever the param, so the float32 run is x_k = 1 - k * lr (up to eps). Each
    rounding error has mean 0 given the past and |error| < ulp, so the errors of k steps sum to a
    martingale of variance < k ulp^2 and the mean over N independent elements has standard
    deviation < ulp * sqrt(k / N); the test allows 6 of them."""
    n, k, lr = 4096, 20, 1e-3  # below 1 the bfloat16 ulp is 2^-8; half of it is 1.95e-3 > lr
    ulp = 2.0**-8

    def run(**kw):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = pyoptim.AdamW([p], lr=lr, weight_decay=0.0, **kw)
        for _ in range(k):
            p.grad = torch.ones_like(p)
            opt.step()
        return p.detach().double()

    x32 = torch.ones(n)
    p32 = torch.nn.Parameter(x32)
    opt32 = pyoptim.AdamW([p32], lr=lr, weight_decay=0.0)
    for _ in range(k):
        p32.grad = torch.ones_like(p32)
        opt32.step()
    target = p32.detach().double().mean().item()
    assert abs(target - (1 - k * lr)) < 1e-6
    assert (run() == 1.0).all()  # round to nearest: stalled
    sr_mean = run(stochastic_rounding=True).mean().item()
    assert abs(sr_mean - target) <= 6 * ulp * math.sqrt(k / n), (sr_mean, target)
    master = run(master_weights=True)  # the master carries the update; the param follows it
    assert abs(master.mean().item() - target) <= ulp / 2


# ---- Kahan-compensated 16-bit params (Note [Kahan-compensated 16-bit params]) -------------------

def kahan_case(sizes, dtype, seed, amsgrad):
    params = _tensors(sizes, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    m = [(torch.randn(n, generator=g) * 0.1).to(dtype) for n in sizes]
    v = [(torch.rand(n, generator=g) * 0.01).to(dtype) for n in sizes]
    x = [(t.float() + 0.01).to(dtype) for t in v] if amsgrad else []
    comps = [(torch.randn(n, generator=g) * 1e-3).to(dtype) for n in sizes]
    return dict(params=params, exp_avgs=m, exp_avg_sqs=v, max_exp_avg_sqs=x,
                state_steps=[torch.tensor(4.0) for _ in sizes], comps=comps)


def run_kahan_op(state, grads, hp):
    op_calls.adam_(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                   state["max_exp_avg_sqs"], state["state_steps"], kahan_comps=state["comps"],
                   **hp)


def run_kahan_ref(state, grads, hp):
    adam_kahan_reference(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                         state["max_exp_avg_sqs"], state["state_steps"], state["comps"], **hp)


@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_kahan_matches_reference(isa, dtype, flags):
    hp = FLAGS[flags]
    state = kahan_case(SIZES, dtype, 7, hp["amsgrad"])
    ref = clone(state)
    for k in range(3):
        grads = _tensors(SIZES, dtype, seed=700 + k)
        run_kahan_op(state, grads, hp)
        run_kahan_ref(ref, grads, hp)
    assert_bitwise_equal(state, ref, isa)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_kahan_special_values(isa, dtype):
    """Kahan-compensated Adam keeps infinity where torch's step keeps it: y = (q - p) + c is
    inf - inf = NaN for an infinite param, so the new param is q itself where q is not finite,
    and the compensation 0 where the stored param is not (an overflow at the first step stays
    infinite at the second). Bitwise as the reference at each step."""
    param, grad = kahan_special_case(dtype)
    hp = _hp(lr=KAHAN_SPECIAL_LR[dtype], weight_decay=0.0)
    z = torch.zeros_like(param)
    state = dict(params=[param], exp_avgs=[z.clone()], exp_avg_sqs=[z.clone()],
                 max_exp_avg_sqs=[], state_steps=[torch.tensor(0.0)], comps=[z.clone()])
    ref = clone(state)
    for _ in range(2):
        run_kahan_op(state, [grad], hp)
        run_kahan_ref(ref, [grad], hp)
        assert_bitwise_equal(state, ref, isa)
        assert_kahan_special(state["params"][0], state["comps"][0])


def test_kahan_threads_agree(restore_num_threads):
    sizes = [300_007, 5]
    hp = _hp(amsgrad=True)
    state0 = kahan_case(sizes, torch.bfloat16, 8, True)
    grads = _tensors(sizes, torch.bfloat16, 88)
    ref = clone(state0)
    run_kahan_ref(ref, grads, hp)
    for level in ISA_LEVELS:
        for threads in THREADS:
            torch.set_num_threads(threads)
            state = clone(state0)
            with _ops.cpu_capability_override(level):
                run_kahan_op(state, grads, hp)
            assert_bitwise_equal(state, ref, f"{level} x {threads} threads")


def test_kahan_keeps_updates_below_half_an_ulp():
    """Updates of a quarter of a bfloat16 ulp: round to nearest drops every one; with the
    compensation the param moves by one ulp every fourth step or so, and ends where float32
    ends to within an ulp."""
    p0 = torch.full((64,), 1.0)
    lr = 2.0**-7 / 4  # a quarter of bf16's spacing at 1: Adam's first steps move by ~lr
    plain = pyoptim.AdamW([torch.nn.Parameter(p0.bfloat16())], lr=lr, weight_decay=0.0)
    kahan = pyoptim.AdamW([torch.nn.Parameter(p0.bfloat16())], lr=lr, weight_decay=0.0,
                          kahan_summation=True)
    ref = pyoptim.AdamW([torch.nn.Parameter(p0.clone())], lr=lr, weight_decay=0.0)
    for _ in range(16):
        for opt in (plain, kahan, ref):
            p = opt.param_groups[0]["params"][0]
            p.grad = torch.full_like(p, -1.0)
            opt.step()
    moved_ref = float(ref.param_groups[0]["params"][0][0]) - 1.0
    moved_plain = float(plain.param_groups[0]["params"][0][0]) - 1.0
    moved_kahan = float(kahan.param_groups[0]["params"][0][0]) - 1.0
    assert moved_plain == 0.0 and moved_ref > 3 * 2.0**-7
    assert abs(moved_kahan - moved_ref) <= 2.0**-7


def test_kahan_optimizer_checkpoints_and_errors():
    torch.manual_seed(0)
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, kahan_summation=True)
    _set_grads(params, 0)
    opt.step()
    st_ = opt.state[params[0]]
    assert st_["kahan_comp"].dtype == torch.bfloat16 and opt.param_groups[0]["kahan_summation"]
    sd = opt.torch_state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert "kahan_summation" not in sd["param_groups"][0]
    torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in params]).load_state_dict(sd)
    # resume: the compensation travels in state_dict
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = pyoptim.AdamW(params2, lr=1e-3, kahan_summation=True)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for k in (1, 2):
        _set_grads(params, k)
        _set_grads(params2, k)
        opt.step()
        opt2.step()
    for a, b in zip(params, params2):
        assert_bitwise_equal(a.detach(), b.detach())
    for kw, dtype in ((dict(kahan_summation=True), torch.float32),
                      (dict(kahan_summation=True, master_weights=True), torch.bfloat16),
                      (dict(kahan_summation=True, stochastic_rounding=True), torch.bfloat16)):
        with pytest.raises(ValueError, match="kahan_summation"):
            pyoptim.AdamW(_model(dtype), **kw)
    # (SGD takes it too: tests/test_sgd_modes.py)
    assert pyoptim.SGD(_model(), lr=0.1, kahan_summation=True).defaults["kahan_summation"]


# name -> (class, param dtype, the checkpoint's groups' modes, the loading optimizer's groups'
# modes, kwargs of both): a pyoptim checkpoint brings its own modes, group by group
CROSS_LOADS = {
    "adamw-kahan-into-master": (pyoptim.AdamW, torch.bfloat16, [dict(kahan_summation=True)],
                                [dict(master_weights=True)], {}),
    "adamw-master-into-kahan": (pyoptim.AdamW, torch.bfloat16, [dict(master_weights=True)],
                                [dict(kahan_summation=True)], {}),
    "adam-sr-into-master": (pyoptim.Adam, torch.bfloat16, [dict(stochastic_rounding=True)],
                            [dict(master_weights=True)], {}),
    "adamw-8bit-into-bf16state": (pyoptim.AdamW, torch.float32, [dict(state_dtype="8bit")],
                                  [dict(state_dtype="bfloat16")], {}),
    "adamw-two-groups": (pyoptim.AdamW, torch.bfloat16, [dict(master_weights=True), {}],
                         [dict(stochastic_rounding=True), dict(kahan_summation=True)], {}),
    "sgd-kahan-into-master": (pyoptim.SGD, torch.bfloat16, [dict(kahan_summation=True)],
                              [dict(master_weights=True)], dict(momentum=0.9)),
    "sgd-two-groups": (pyoptim.SGD, torch.float16, [dict(master_weights=True), {}],
                       [{}, dict(kahan_summation=True)], dict(momentum=0.9)),
}
_MODE_KEYS = ("master_weights", "stochastic_rounding", "state_dtype", "kahan_summation")


def _modes(group):
    return {k: group[k] for k in _MODE_KEYS if k in group}


@pytest.mark.parametrize("name", list(CROSS_LOADS))
def test_pyoptim_checkpoint_brings_its_modes_into_any_optimizer(name):
    """torch's load_state_dict gives each group the checkpoint's hyper-parameters: a pyoptim
    checkpoint's modes replace the loading optimizer's (modes off where its group has none),
    and the run resumes bitwise as the saving optimizer's; torch.optim loads it too."""
    cls, dtype, saved_modes, own_modes, common = CROSS_LOADS[name]

    def make(params, modes):
        groups = [{"params": params[k::len(modes)], **m} for k, m in enumerate(modes)]
        return cls(groups, lr=1e-2, **common)

    params = _model(dtype)
    src = make(params, saved_modes)
    for k in range(2):
        _set_grads(params, k)
        src.step()
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    loaded = snapshot(params2)
    dst = make(params2, own_modes)
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    assert [_modes(g) for g in dst.param_groups] == [_modes(g) for g in src.param_groups]
    for k in (2, 3):
        _set_grads(params, k)
        _set_grads(params2, k)
        torch.manual_seed(k)
        src.step()
        torch.manual_seed(k)
        dst.step()
    assert any_changed(loaded, params2), name  # the resumed steps moved the params
    assert_bitwise_equal(snapshot(params2), snapshot(params), name)
    assert_bitwise_equal(snapshot(dst.state_dict()), snapshot(src.state_dict()), name)
    plain = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = getattr(torch.optim, cls.__name__)(
        [{"params": plain[k::len(saved_modes)]} for k in range(len(saved_modes))], lr=1e-2,
        **common)
    topt.load_state_dict(copy.deepcopy(src.state_dict()))
    _set_grads(plain, 4)
    topt.step()


def test_torch_checkpoint_keeps_the_loading_optimizers_modes():
    """A checkpoint without pyoptim's flags (torch.optim's, or pyoptim's with every mode off)
    keeps the loading optimizer's flags in every group."""
    params = _model()
    for src in (torch.optim.AdamW(params[:2], lr=1e-2), pyoptim.AdamW(params[:2], lr=1e-2)):
        src.add_param_group({"params": params[2:]})
        _set_grads(params, 0)
        src.step()
        params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
        dst = pyoptim.AdamW([{"params": params2[:2], "master_weights": True},
                             {"params": params2[2:], "kahan_summation": True}], lr=1e-2)
        dst.load_state_dict(src.state_dict())
        assert [_modes(g) for g in dst.param_groups] == [dict(master_weights=True),
                                                         dict(kahan_summation=True)]
        _set_grads(params2, 1)
        dst.step()
        assert dst.state[params2[0]]["master_param"].dtype == torch.float32
        assert dst.state[params2[2]]["kahan_comp"].dtype == torch.bfloat16


def _step_alike(src, params, dst, params2, ks):
    """Grads k in ks into both runs (a checkpoint's source and the optimizer that loaded it),
    each stepped; the resumed steps must move the params (a step that wrote nothing would
    agree too)."""
    loaded = snapshot(params2)
    for k in ks:
        _set_grads(params, k)
        _set_grads(params2, k)
        src.step()
        dst.step()
    assert any_changed(loaded, params2)


@pytest.mark.parametrize("cls,dtype,kwargs", [
    (pyoptim.AdamW, torch.bfloat16, dict(master_weights=True)),
    (pyoptim.Adam, torch.bfloat16, dict(stochastic_rounding=True)),
    (pyoptim.AdamW, torch.float32, dict(state_dtype="8bit")),
    (pyoptim.SGD, torch.float16, dict(master_weights=True, momentum=0.9)),
], ids=["adamw-master", "adam-sr", "adamw-8bit", "sgd-master"])
def test_load_takes_saved_state_from_the_pre_hooks_dict(cls, dtype, kwargs):
    """load_state_dict keeps pyoptim's state as saved from the state dict torch loads, the one
    the load_state_dict pre-hooks return (here: params matched by name, the checkpoint's in
    another order), before the post-hooks see the state: each param gets its own master, seed
    and scales, and the run resumes bitwise. (It took them from the dict passed in, by position:
    another param's master, stepped into this param.)"""
    params = _model(dtype)
    names = [f"p{k}" for k in range(len(params))]
    src = cls(list(zip(names, params)), lr=1e-2, **kwargs)
    for k in range(2):
        _set_grads(params, k)
        src.step()
    sd = copy.deepcopy(src.state_dict())
    n = len(params)
    sd["param_groups"][0]["param_names"] = names[::-1]  # the same checkpoint, params reversed
    sd["state"] = {n - 1 - pid: s for pid, s in sd["state"].items()}
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    dst = cls(list(zip(names, params2)), lr=1e-2, **kwargs)
    dst.register_load_state_dict_pre_hook(names_matching)
    seen = []
    dst.register_load_state_dict_post_hook(
        lambda opt: seen.append(snapshot([opt.state[p] for p in params2])))
    dst.load_state_dict(sd)
    assert_bitwise_equal(seen, [snapshot([src.state[p] for p in params])])
    _step_alike(src, params, dst, params2, (2, 3))
    assert_bitwise_equal(snapshot(params2), snapshot(params))
    assert_bitwise_equal(snapshot([dst.state[p] for p in params2]),
                         snapshot([src.state[p] for p in params]))


@pytest.mark.parametrize("cls,dtype,kwargs", [
    (pyoptim.AdamW, torch.bfloat16, dict(stochastic_rounding=True)),
    (pyoptim.SGD, torch.bfloat16, dict(stochastic_rounding=True, momentum=0.9)),
    (pyoptim.Adam, torch.float32, dict(state_dtype="bfloat16")),
], ids=["adamw-sr", "sgd-sr", "adam-bf16-states"])
def test_seed_saved_as_a_number_loads_as_a_tensor(cls, dtype, kwargs):
    """A checkpoint whose sr_seed is a Python int (converted by a tool) loads as the int64 CPU
    tensor the ops read, and the run resumes bitwise. (It stayed an int, and every later step
    raised the op's schema error for sr_seeds.)"""
    params = _model(dtype)
    src = cls(params, lr=1e-2, **kwargs)
    _set_grads(params, 0)
    src.step()
    sd = copy.deepcopy(src.state_dict())
    for state in sd["state"].values():
        state["sr_seed"] = int(state["sr_seed"])
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    dst = cls(params2, lr=1e-2, **kwargs)
    dst.load_state_dict(sd)
    _step_alike(src, params, dst, params2, (1, 2))
    assert_bitwise_equal(snapshot(params2), snapshot(params))
    assert_bitwise_equal(snapshot(dst.state_dict()), snapshot(src.state_dict()))
