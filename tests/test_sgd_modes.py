"""SGD (with momentum) in its stochastic-rounding and reduced-precision-buffer modes:
`stochastic_rounding=True` (bfloat16 params), `state_dtype=torch.bfloat16` / "8bit" (float32
params) (Note [Master weights and stochastic rounding], Note [Reduced-precision optimizer
states]). SGD has no step count: the step adds one to the param's seed, which keys its bits.
And `kahan_summation=True` (bfloat16 / float16 params, with or without momentum: Note
[Kahan-compensated 16-bit params]).

Op level, bitwise against tests/reference_mixed.py at every ISA level and thread count; the
optimizer class's flags, errors and checkpoints.
"""

from __future__ import annotations

import copy
import io

import op_calls
import pytest
import torch
from conftest import ISA_LEVELS, dtype_id
from helpers import assert_bitwise_equal, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_mixed import (
    KAHAN_SPECIAL_LR,
    assert_kahan_special,
    kahan_special_case,
    q8_decode,
    q8_encode,
    sgd_kahan_reference,
    sgd_modes_reference,
)
from reference_sgd import sgd_reference

import pyoptim
from pyoptim import _ops

SIZES = [1, 7, 16, 255, 256, 257, 1000, 4099]
MODES = ["sr", "bfloat16", "8bit"]
FLAGS = op_calls.SGD_MOMENTUM_FLAGS


def _tensors(sizes, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g) * scale).to(dtype) for n in sizes]


def case(mode, sizes=SIZES, seed=1):
    pdtype = torch.bfloat16 if mode == "sr" else torch.float32
    bdtype = {"sr": torch.bfloat16, "bfloat16": torch.bfloat16, "8bit": torch.int8}[mode]
    state = dict(params=_tensors(sizes, seed, pdtype),
                 bufs=[torch.zeros(n, dtype=bdtype) for n in sizes],
                 seeds=[torch.tensor(s) for s in (7, -3, 2**62 + 5, 0, 1, 99, 12345, 42)][
                     :len(sizes)])
    if mode == "8bit":
        state["scales"] = [torch.zeros(-(-n // 256)) for n in sizes]
    return state


def clone(state):
    return {k: [t.clone() for t in v] for k, v in state.items()}


def run_op(state, grads, hp, mode, first):
    op_calls.sgd_(state["params"], grads, state["bufs"], is_first_step=first,
                  sr_seeds=state["seeds"], states=None if mode == "sr" else mode,
                  buffer_scales=state.get("scales"), **hp)


def run_ref(state, grads, hp, mode, first):
    seeds = [int(s) for s in state["seeds"]]
    sgd_modes_reference(state["params"], grads, state["bufs"], seeds, mode, first,
                        state.get("scales"), **hp)
    for t, s in zip(state["seeds"], seeds):
        t.fill_(s)


@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(isa, mode, flags):
    hp = FLAGS[flags]
    state = case(mode)
    ref = clone(state)
    dtype = torch.bfloat16 if mode == "sr" else torch.float32
    for k in range(3):
        grads = _tensors(SIZES, 100 + k, dtype)
        run_op(state, grads, hp, mode, first=k == 0)
        run_ref(ref, grads, hp, mode, first=k == 0)
    assert_bitwise_equal(state, ref, isa)
    assert [int(s) for s in state["seeds"]][:2] == [7 + 3, -3 + 3]


@pytest.mark.parametrize("mode", MODES)
def test_levels_and_threads_agree(restore_num_threads, mode):
    sizes = [300_007, 5]
    hp = FLAGS["nesterov-wd"]
    dtype = torch.bfloat16 if mode == "sr" else torch.float32
    state0 = case(mode, sizes, 3)
    grads0 = _tensors(sizes, 33, dtype)
    run_ref(state0, grads0, hp, mode, first=True)  # a buffer to start from
    grads = _tensors(sizes, 34, dtype)
    ref = clone(state0)
    run_ref(ref, grads, hp, mode, first=False)
    for level in ISA_LEVELS:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            state = clone(state0)
            with _ops.cpu_capability_override(level):
                run_op(state, grads, hp, mode, first=False)
            assert_bitwise_equal(state, ref, f"{level} x {threads} threads")


def test_skipped_step_keeps_the_seed():
    state = case("bfloat16", sizes=[10])
    before = snapshot(state)
    run_op(state, _tensors([10], 1), dict(FLAGS["momentum"], found_inf=torch.tensor(1.0)),
           "bfloat16", first=True)
    assert_bitwise_equal(state, before)


BAD = {
    "sr-fp32-param": ("sr", lambda s: s["params"].__setitem__(0, s["params"][0].float()),
                      ValueError, "stochastic_rounding is for bfloat16"),
    "8bit-short-scales": ("8bit", lambda s: s["scales"].__setitem__(6, s["scales"][6][:1]),
                          ValueError, "block scales for params\\[6\\]"),
    "bf16-buffer-dtype": ("bfloat16", lambda s: s["bufs"].__setitem__(2, s["bufs"][2].float()),
                          TypeError, "momentum_buffers\\[2\\]"),
    "no-seed": ("bfloat16", lambda s: s["seeds"].pop(), ValueError, "sr_seeds"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_writes_nothing(name):
    mode, mutate, exc, match = BAD[name]
    state = case(mode)
    mutate(state)
    before = snapshot(state)
    with pytest.raises(exc, match=match):
        run_op(state, [torch.randn_like(p) for p in state["params"]], FLAGS["momentum"], mode,
               first=False)
    assert_bitwise_equal(state, before)


def test_without_momentum_or_sparse_rejected_by_the_op():
    state = case("bfloat16", sizes=[8])
    with pytest.raises(ValueError, match="without momentum"):
        op_calls.sgd_(state["params"], [torch.randn(8)], [], is_first_step=False,
                      sr_seeds=state["seeds"], states="bfloat16",
                      **dict(FLAGS["momentum"], momentum=0.0))
    sparse = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2), (8,))
    with pytest.raises(ValueError, match="dense grads"):
        run_op(state, [sparse], FLAGS["momentum"], "bfloat16", first=False)


# ---- the optimizer class -----------------------------------------------------------------------

def _model(dtype, seed=0, sizes=(37, 300, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g).to(dtype)) for n in sizes]


def _set_grads(params, k):
    g = torch.Generator().manual_seed(1000 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


def _assert_resumes_bitwise(params: list, opt, make_opt) -> tuple[list, torch.optim.Optimizer]:
    """A checkpoint of (params, opt) taken now, resumed into make_opt(new params), continues
    bit for bit as opt does (steps 3 and 4); returns the resumed params and optimizer."""
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    for k in range(3, 5):
        _set_grads(params, k)
        opt.step()
    straight = [p.detach().clone() for p in params]
    buf.seek(0)
    ckpt = torch.load(buf)
    params2 = [torch.nn.Parameter(t.clone()) for t in ckpt["model"]]
    opt2 = make_opt(params2)
    opt2.load_state_dict(ckpt["opt"])
    for k in range(3, 5):
        _set_grads(params2, k)
        opt2.step()
    for a, b in zip(params2, straight):
        assert_bitwise_equal(a.detach(), b)
    return params2, opt2


KW = {"sr": dict(stochastic_rounding=True), "bfloat16": dict(state_dtype=torch.bfloat16),
      "8bit": dict(state_dtype="8bit")}


@pytest.mark.parametrize("mode", MODES)
def test_optimizer_matches_reference_and_resumes(mode):
    dtype = torch.bfloat16 if mode == "sr" else torch.float32
    hp = FLAGS["nesterov-wd"]
    opt_kw = dict(lr=hp["lr"], momentum=hp["momentum"], nesterov=True, weight_decay=0.01)

    torch.manual_seed(4)
    params = _model(dtype)
    opt = pyoptim.SGD(params, **opt_kw, **KW[mode])
    ref = case(mode, sizes=[p.numel() for p in params])
    ref["params"] = [p.detach().clone() for p in params]
    for k in range(3):
        _set_grads(params, k)
        opt.step()
        if k == 0:  # the seeds drawn at the first step, before it counted
            for t, p in zip(ref["seeds"], params):
                t.fill_(int(opt.state[p]["sr_seed"]) - 1)
        run_ref(ref, [p.grad for p in params], hp, mode, first=k == 0)
    for i, p in enumerate(params):
        assert_bitwise_equal(p.detach(), ref["params"][i])
        assert_bitwise_equal(opt.state[p]["momentum_buffer"], ref["bufs"][i])
        assert int(opt.state[p]["sr_seed"]) == int(ref["seeds"][i])

    torch.manual_seed(99)  # (a resumed run draws no new seed)
    _assert_resumes_bitwise(params, opt, lambda ps: pyoptim.SGD(ps, **opt_kw, **KW[mode]))


@pytest.mark.parametrize("mode", ["bfloat16", "8bit"])
def test_torch_checkpoints_both_ways(mode):
    params = _model(torch.float32)
    opt = pyoptim.SGD(params, lr=0.05, momentum=0.9, **KW[mode])
    _set_grads(params, 0)
    opt.step()
    sd = opt.torch_state_dict()
    assert set(sd["state"][0]) == {"momentum_buffer"}
    for i, p in enumerate(params):  # the buffer the step wrote (buf = grad), decoded
        st_ = opt.state[p]
        buf = st_["momentum_buffer"]
        held = (buf.float() if mode == "bfloat16" else
                q8_decode(buf, st_["momentum_buffer_scale"], False))
        assert held.any()
        assert_bitwise_equal(sd["state"][i]["momentum_buffer"], held)
    tparams = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9)
    topt.load_state_dict(sd)
    _set_grads(tparams, 1)
    topt.step()
    # and a torch checkpoint into the reduced buffer: converted at the next step (to nearest),
    # then stepped as the reference steps the converted buffer
    params3 = [torch.nn.Parameter(p.detach().clone()) for p in tparams]
    opt3 = pyoptim.SGD(params3, lr=0.05, momentum=0.9, **KW[mode])
    opt3.load_state_dict(copy.deepcopy(topt.state_dict()))
    _set_grads(params3, 2)
    opt3.step()
    ref_params = [p.detach().clone() for p in tparams]
    ref_bufs, ref_scales = [], []
    for p in tparams:
        b32 = topt.state[p]["momentum_buffer"]
        if mode == "bfloat16":
            ref_bufs.append(b32.bfloat16())
        else:
            codes, scales = q8_encode(b32, torch.full((b32.numel(),), 0x8000), False)
            ref_bufs.append(codes.to(torch.int8).reshape(b32.shape))
            ref_scales.append(scales)
    seeds = [int(opt3.state[p]["sr_seed"]) - 1 for p in params3]  # the step added one
    sgd_modes_reference(ref_params, [p.grad for p in params3], ref_bufs, seeds, mode, False,
                        buffer_scales=ref_scales, **op_calls.SGD_MOMENTUM_FLAGS["momentum"])
    for i, p in enumerate(params3):
        assert not torch.equal(p.detach(), tparams[i].detach())  # the step moved the param
        assert_bitwise_equal(p.detach(), ref_params[i])
        assert_bitwise_equal(opt3.state[p]["momentum_buffer"], ref_bufs[i])
        if mode == "8bit":
            assert_bitwise_equal(opt3.state[p]["momentum_buffer_scale"], ref_scales[i])


ERRORS = {
    "sr-no-momentum": (dict(stochastic_rounding=True, momentum=0.0), torch.bfloat16,
                       "needs momentum"),
    "states-no-momentum": (dict(state_dtype="8bit", momentum=0.0), torch.float32,
                           "needs momentum"),
    "states-bf16-params": (dict(state_dtype=torch.bfloat16, momentum=0.9), torch.bfloat16,
                           "needs float32 params"),
    "sr-fp32": (dict(stochastic_rounding=True, momentum=0.9), torch.float32, "needs bfloat16"),
    "states-and-master": (dict(state_dtype="8bit", master_weights=True, momentum=0.9),
                          torch.float32, "master_weights"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_combinations_raise_at_construction(name):
    kw, dtype, match = ERRORS[name]
    with pytest.raises(ValueError, match=match):
        pyoptim.SGD(_model(dtype), lr=0.1, **kw)


def test_default_is_torchs_behaviour():
    opt = pyoptim.SGD(_model(torch.float32), lr=0.1, momentum=0.9)
    assert opt.defaults == torch.optim.SGD(_model(torch.float32), lr=0.1, momentum=0.9).defaults


# ---- Kahan-compensated 16-bit params (Note [Kahan-compensated 16-bit params]) -------------------

HALF_DTYPES = [torch.bfloat16, torch.float16]
# around the vector widths (8 / 16 lanes, twice that for the paired bfloat16 accesses)
KAHAN_SIZES = [1, 7, 16, 31, 32, 33, 63, 64, 65, 257, 4099]
KAHAN_FLAGS = {**FLAGS, **op_calls.SGD_PLAIN_FLAGS}


def kahan_case(sizes, dtype, seed, momentum=True):
    g = torch.Generator().manual_seed(seed)
    return dict(params=_tensors(sizes, seed, dtype),
                bufs=[(torch.randn(n, generator=g) * 0.1).to(dtype) for n in sizes]
                if momentum else [],
                comps=[(torch.randn(n, generator=g) * 1e-3).to(dtype) for n in sizes])


def run_kahan_op(state, grads, hp, first=False):
    op_calls.sgd_(state["params"], grads, state["bufs"], is_first_step=first,
                  kahan_comps=state["comps"], **hp)


def run_kahan_ref(state, grads, hp, first=False):
    sgd_kahan_reference(state["params"], grads, state["bufs"], state["comps"], first, **hp)


@pytest.mark.parametrize("flags", list(KAHAN_FLAGS))
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_kahan_matches_reference(isa, dtype, flags):
    hp = KAHAN_FLAGS[flags]
    state = kahan_case(KAHAN_SIZES, dtype, 5, hp["momentum"] != 0)
    ref = clone(state)
    for k in range(3):
        grads = _tensors(KAHAN_SIZES, 500 + k, dtype)
        run_kahan_op(state, grads, hp, first=k == 0)
        run_kahan_ref(ref, grads, hp, first=k == 0)
    assert_bitwise_equal(state, ref, isa)
    assert any(not torch.equal(c, c0) for c, c0 in
               zip(state["comps"], kahan_case(KAHAN_SIZES, dtype, 5)["comps"]))


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_kahan_special_values(isa, dtype, momentum):
    """Kahan-compensated SGD keeps infinity where torch's step keeps it (test_master.py's Adam
    test, the same values): bitwise as the reference at each step."""
    param, grad = kahan_special_case(dtype)
    hp = dict(KAHAN_FLAGS["plain"], lr=KAHAN_SPECIAL_LR[dtype], momentum=momentum)
    state = dict(params=[param], bufs=[torch.zeros_like(param)] if momentum else [],
                 comps=[torch.zeros_like(param)])
    ref = {k: [t.clone() for t in v] for k, v in state.items()}
    for k in range(2):
        run_kahan_op(state, [grad], hp, first=k == 0)
        run_kahan_ref(ref, [grad], hp, first=k == 0)
        assert_bitwise_equal(state, ref, isa)
        assert_kahan_special(state["params"][0], state["comps"][0])


@pytest.mark.parametrize("flags", ["nesterov-wd", "plain"])
def test_kahan_levels_and_threads_agree(restore_num_threads, flags):
    sizes = [300_007, 5, 1000]
    hp = KAHAN_FLAGS[flags]
    state0 = kahan_case(sizes, torch.bfloat16, 6, hp["momentum"] != 0)
    grads = _tensors(sizes, 66, torch.bfloat16)
    ref = clone(state0)
    run_kahan_ref(ref, grads, hp)
    for level in ISA_LEVELS:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            state = clone(state0)
            with _ops.cpu_capability_override(level):
                run_kahan_op(state, grads, hp)
            assert_bitwise_equal(state, ref, f"{level} x {threads} threads")


def test_kahan_relayout_matches_reference():
    """A transposed param (its state row-major): the op works on copies and writes them back."""
    hp = KAHAN_FLAGS["nesterov-wd"]
    g = torch.Generator().manual_seed(8)
    p = torch.randn(40, 9, generator=g).bfloat16().t()
    state = dict(params=[p], bufs=[torch.randn(9, 40, generator=g).bfloat16() * 0.1],
                 comps=[torch.randn(9, 40, generator=g).bfloat16() * 1e-3])
    ref = {k: [t.clone(memory_format=torch.contiguous_format) for t in v]
           for k, v in state.items()}
    grads = [torch.randn(9, 40, generator=g).bfloat16()]
    run_kahan_op(state, grads, hp)
    run_kahan_ref(ref, grads, hp)
    assert_bitwise_equal({k: [t.contiguous() for t in v] for k, v in state.items()}, ref)


@settings(max_examples=max(1, settings().max_examples // 2))
@given(n=st.integers(0, 300), seed=st.integers(0, 2**20), dtype=st.sampled_from(HALF_DTYPES),
       flags=st.sampled_from(list(KAHAN_FLAGS)), scale=st.sampled_from([1e-4, 1.0, 30.0]),
       lr=st.sampled_from([1e-4, 0.05, 1.0]), amp=st.sampled_from([None, 2.0**16, 3.0]),
       first=st.booleans())
def test_kahan_matches_reference_hypothesis(n, seed, dtype, flags, scale, lr, amp, first):
    """Drawn sizes, magnitudes, learning rates and GradScaler scales, every level."""
    hp = dict(KAHAN_FLAGS[flags], lr=lr)
    if amp is not None:
        hp["grad_scale"] = torch.tensor(amp)
    sizes = [n, 3]
    state0 = kahan_case(sizes, dtype, seed, hp["momentum"] != 0)
    grads = _tensors(sizes, seed + 1, dtype, scale * (amp or 1.0))
    ref = clone(state0)
    run_kahan_ref(ref, grads, hp, first)
    for level in ISA_LEVELS:
        state = clone(state0)
        with _ops.cpu_capability_override(level):
            run_kahan_op(state, grads, hp, first)
        assert_bitwise_equal(state, ref, level)


def test_kahan_skipped_step_writes_nothing():
    state = kahan_case([40, 7], torch.bfloat16, 9)
    before = snapshot(state)
    run_kahan_op(state, _tensors([40, 7], 1, torch.bfloat16),
                 dict(FLAGS["momentum"], found_inf=torch.tensor(1.0)))
    assert_bitwise_equal(state, before)


KAHAN_BAD = {
    "fp32-param": (lambda s: s["params"].__setitem__(1, s["params"][1].float()), ValueError,
                   "kahan is for bfloat16 and float16"),
    "comp-dtype": (lambda s: s["comps"].__setitem__(1, s["comps"][1].half()), TypeError,
                   "kahan_comps\\[1\\]"),
    "comp-shape": (lambda s: s["comps"].__setitem__(1, s["comps"][1][:3]), ValueError,
                   "kahan_comps\\[1\\]"),
    "comp-missing": (lambda s: s["comps"].pop(), ValueError, "kahan_comps"),
    "sparse-grad": (None, ValueError, "kahan takes dense grads"),
}


@pytest.mark.parametrize("name", list(KAHAN_BAD))
def test_kahan_bad_input_writes_nothing(name):
    mutate, exc, match = KAHAN_BAD[name]
    state = kahan_case([9, 8], torch.bfloat16, 10)
    grads = _tensors([9, 8], 3, torch.bfloat16)
    if mutate is None:
        grads[1] = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2).bfloat16(), (8,))
    else:
        mutate(state)
    before = snapshot(state)
    with pytest.raises(exc, match=match):
        run_kahan_op(state, grads, FLAGS["momentum"])
    assert_bitwise_equal(state, before)


def test_kahan_with_another_mode_rejected_by_the_op():
    state = kahan_case([8], torch.bfloat16, 11)
    with pytest.raises(ValueError, match="kahan with master_weights"):
        op_calls.sgd_(state["params"], _tensors([8], 2, torch.bfloat16), state["bufs"],
                      is_first_step=False, kahan_comps=state["comps"],
                      sr_seeds=[torch.tensor(3)], **FLAGS["momentum"])


# ---- Kahan: the optimizer class ---------------------------------------------------------------

def _kahan_groups(params):
    """Group 0: Kahan with Nesterov momentum; group 1: Kahan without momentum (its compensation is
    its only state); group 2: plain momentum (torch's bfloat16 SGD)."""
    return [dict(params=params[:2], kahan_summation=True, momentum=0.9, nesterov=True,
                 weight_decay=0.01),
            dict(params=params[2:3], kahan_summation=True, momentum=0.0, maximize=True),
            dict(params=params[3:], momentum=0.5, dampening=0.1)]


def _kahan_ref_step(ref, opt, params, first):
    for group in opt.param_groups:
        hp = {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov",
                                    "maximize")}
        idx = [next(i for i, q in enumerate(params) if q is p) for p in group["params"]]
        grads = [params[i].grad for i in idx]
        ps = [ref["params"][i] for i in idx]
        bufs = [ref["bufs"][i] for i in idx] if hp["momentum"] != 0 else []
        if group.get("kahan_summation", False):
            sgd_kahan_reference(ps, grads, bufs, [ref["comps"][i] for i in idx], first, **hp)
        else:
            for p, g, b in zip(ps, grads, bufs):
                sgd_reference(p, g, b, first=first, **hp)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=dtype_id)
def test_kahan_optimizer_matches_reference_and_resumes(dtype):
    torch.manual_seed(4)
    params = _model(dtype, sizes=(37, 300, 65, 5))
    opt = pyoptim.SGD(_kahan_groups(params), lr=0.05)
    ref = dict(params=[p.detach().clone() for p in params],
               bufs=[torch.zeros_like(p) for p in params],
               comps=[torch.zeros_like(p) for p in params])
    for k in range(3):
        _set_grads(params, k)
        opt.step()
        _kahan_ref_step(ref, opt, params, first=k == 0)
    for i, p in enumerate(params):
        assert_bitwise_equal(p.detach(), ref["params"][i], f"param {i}")
        state = opt.state[p]
        if i < 3:
            assert state["kahan_comp"].dtype == dtype
            assert_bitwise_equal(state["kahan_comp"], ref["comps"][i], f"comp {i}")
        else:
            assert "kahan_comp" not in state
        if i == 2:
            assert set(state) == {"kahan_comp"}  # no momentum: no buffer, as torch
        else:
            assert_bitwise_equal(state["momentum_buffer"], ref["bufs"][i], f"buf {i}")

    # the compensation travels with the checkpoint
    params2, opt2 = _assert_resumes_bitwise(params, opt,
                                            lambda ps: pyoptim.SGD(_kahan_groups(ps), lr=0.05))
    assert opt2.state[params2[2]]["kahan_comp"].dtype == dtype


def test_kahan_torch_checkpoints_both_ways():
    params = _model(torch.bfloat16)
    opt = pyoptim.SGD(params, lr=0.05, momentum=0.9, kahan_summation=True)
    _set_grads(params, 0)
    opt.step()
    sd = opt.torch_state_dict()
    assert set(sd["state"][0]) == {"momentum_buffer"}
    assert "kahan_summation" not in sd["param_groups"][0]
    tparams = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=0.9)
    topt.load_state_dict(sd)
    _set_grads(tparams, 1)
    topt.step()
    # a torch checkpoint into a Kahan optimizer: the compensation starts at zero
    params3 = [torch.nn.Parameter(p.detach().clone()) for p in tparams]
    opt3 = pyoptim.SGD(params3, lr=0.05, momentum=0.9, kahan_summation=True)
    opt3.load_state_dict(copy.deepcopy(topt.state_dict()))
    ref = dict(params=[p.detach().clone() for p in params3],
               bufs=[topt.state[p]["momentum_buffer"].clone() for p in tparams],
               comps=[torch.zeros_like(p) for p in params3])
    _set_grads(params3, 2)
    opt3.step()
    run_kahan_ref(ref, [p.grad for p in params3], dict(FLAGS["momentum"], lr=0.05))
    assert_bitwise_equal([p.detach() for p in params3], ref["params"])
    assert_bitwise_equal([opt3.state[p]["kahan_comp"] for p in params3], ref["comps"])
    # and without momentum, torch.optim.SGD keeps no state: nor does the export
    opt4 = pyoptim.SGD(params3, lr=0.05, kahan_summation=True)
    opt4.step()
    assert opt4.torch_state_dict()["state"] == {}
    torch.optim.SGD(params3, lr=0.05).load_state_dict(opt4.torch_state_dict())


@pytest.mark.parametrize("frozen", [False, True], ids=["all-grads", "a-param-without-grad"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_kahan_state_follows_the_params_new_dtype(momentum, frozen):
    """A bfloat16 model made float16 between steps (Note [State in another dtype]): SGD keeps
    training, as torch's does, with the compensation (and the buffer) converted to the param's
    dtype as load_state_dict casts them, and steps as the reference from that converted state.
    `frozen`: a param without a grad, so the step keeps its Plan. (It raised TypeError for the
    compensation's dtype, with or without momentum.)"""
    params = _model(torch.bfloat16)
    if frozen:
        params[2].requires_grad_(False)
    live = params[:2] if frozen else params
    opt = pyoptim.SGD(params, lr=0.05, momentum=momentum, kahan_summation=True)
    for k in range(2):
        _set_grads(live, k)
        opt.step()
    for p in params:
        p.data = p.data.half()
    ref = dict(params=[p.detach().clone() for p in live],
               bufs=[opt.state[p]["momentum_buffer"].half() for p in live] if momentum else [],
               comps=[opt.state[p]["kahan_comp"].half() for p in live])
    assert any(c.count_nonzero() for c in ref["comps"])  # a compensation to carry over
    _set_grads(live, 2)
    opt.step()
    run_kahan_ref(ref, [p.grad for p in live], dict(FLAGS["momentum"], lr=0.05, momentum=momentum))
    assert_bitwise_equal([p.detach() for p in live], ref["params"])
    assert_bitwise_equal([opt.state[p]["kahan_comp"] for p in live], ref["comps"])
    if momentum:
        assert_bitwise_equal([opt.state[p]["momentum_buffer"] for p in live], ref["bufs"])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_kahan_grad_scaler_skip_creates_and_writes_nothing(momentum):
    params = _model(torch.bfloat16)
    opt = pyoptim.SGD(params, lr=0.05, momentum=momentum, kahan_summation=True)
    _set_grads(params, 0)
    before = snapshot([p.detach() for p in params])
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    opt.step()
    assert_bitwise_equal([p.detach() for p in params], before)
    assert all(not opt.state[p] for p in params)  # no compensation, no buffer
    opt.found_inf = torch.tensor(0.0)  # the next step is taken, grads divided by the scale
    opt.step()
    ref = dict(params=before, bufs=[torch.zeros_like(p) for p in params] if momentum else [],
               comps=[torch.zeros_like(p) for p in params])
    run_kahan_ref(ref, [p.grad for p in params],
                  dict(FLAGS["momentum"], lr=0.05, momentum=momentum, grad_scale=4.0),
                  first=True)
    assert_bitwise_equal([p.detach() for p in params], ref["params"])
    assert_bitwise_equal([opt.state[p]["kahan_comp"] for p in params], ref["comps"])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_kahan_keeps_updates_below_half_an_ulp(momentum):
    """Updates of about a quarter of a bfloat16 ulp at 1: round to nearest (torch's bfloat16 SGD)
    drops every one; with the compensation the param moves as float32 SGD's does, to within an
    ulp, and equals the Kahan reference bit for bit."""
    lr = 2.0**-7 / 4 / (10.0 if momentum else 1.0)  # the buffer grows to ~10x the grad
    p0 = torch.full((64,), 1.0)
    plain = pyoptim.SGD([torch.nn.Parameter(p0.bfloat16())], lr=lr, momentum=momentum)
    kahan = pyoptim.SGD([torch.nn.Parameter(p0.bfloat16())], lr=lr, momentum=momentum,
                        kahan_summation=True)
    f32 = pyoptim.SGD([torch.nn.Parameter(p0.clone())], lr=lr, momentum=momentum)
    hp = dict(FLAGS["momentum"], lr=lr, momentum=momentum)
    ref = dict(params=[p0.bfloat16()], bufs=[torch.zeros(64).bfloat16()] if momentum else [],
               comps=[torch.zeros(64).bfloat16()])
    for k in range(40):
        for opt in (plain, kahan, f32):
            p = opt.param_groups[0]["params"][0]
            p.grad = torch.full_like(p, -1.0)
            opt.step()
        run_kahan_ref(ref, [torch.full((64,), -1.0).bfloat16()], hp, first=k == 0)

    def moved(opt):
        return float(opt.param_groups[0]["params"][0][0].detach()) - 1.0

    assert moved(plain) == 0.0 and moved(f32) > 4 * 2.0**-7
    assert abs(moved(kahan) - moved(f32)) <= 2.0**-7
    assert_bitwise_equal(kahan.param_groups[0]["params"][0].detach(), ref["params"][0])


KAHAN_ERRORS = {
    "fp32": (dict(kahan_summation=True), torch.float32, "bfloat16 or float16 params"),
    "master": (dict(kahan_summation=True, master_weights=True, momentum=0.9), torch.bfloat16,
               "master_weights"),
    "sr": (dict(kahan_summation=True, stochastic_rounding=True, momentum=0.9), torch.bfloat16,
           "stochastic_rounding"),
    "states": (dict(kahan_summation=True, state_dtype=torch.bfloat16, momentum=0.9),
               torch.bfloat16, "state_dtype"),
    "differentiable": (dict(kahan_summation=True, differentiable=True), torch.bfloat16,
                       "differentiable"),
}


@pytest.mark.parametrize("name", list(KAHAN_ERRORS))
def test_kahan_bad_combinations_raise_at_construction(name):
    kw, dtype, match = KAHAN_ERRORS[name]
    with pytest.raises(ValueError, match=match):
        pyoptim.SGD(_model(dtype), lr=0.1, **kw)


def test_kahan_sparse_grad_raises_and_creates_nothing():
    emb = torch.nn.Embedding(10, 4, sparse=True).bfloat16()
    opt = pyoptim.SGD(emb.parameters(), lr=0.1, kahan_summation=True)
    emb(torch.tensor([1, 3])).sum().backward()
    before = snapshot(emb.weight.detach())
    with pytest.raises(ValueError, match="kahan takes dense grads"):
        opt.step()
    assert_bitwise_equal(emb.weight.detach(), before)
    assert not opt.state[emb.weight]
