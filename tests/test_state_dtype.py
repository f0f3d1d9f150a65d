"""Reduced-precision optimizer states: Adam / AdamW `state_dtype=torch.bfloat16` and "8bit"
(Note [Reduced-precision optimizer states] in csrc/include/pyoptim/math/quantize.h).

Op level, bitwise against tests/reference_mixed.py at every ISA level and thread count; the
8-bit conversions' round-trip bounds (tests/tolerances.py); the optimizer classes' flag, errors
and checkpoints (a resumed run continues bit for bit; torch.optim loads a bfloat16-state
checkpoint and the export of an 8-bit one; a torch.optim checkpoint loads into both).
"""

from __future__ import annotations

import copy
import io
import math

import op_calls
import pytest
import torch
from conftest import ISA_LEVELS, dtype_id
from helpers import any_changed, assert_bitwise_equal, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_mixed import Q8_BLOCK, adam_states_reference, q8_decode, q8_encode
from reference_sparse_adam import sqrt_rn
from tolerances import Q8_LOAD_STEP, Q8_ROUND_TRIP

import pyoptim
from pyoptim import _ops

SIZES = [1, 7, 16, 255, 256, 257, 1000, 4099]
FORMATS = ["bfloat16", "8bit"]
SEEDS = [7, -3, 2**62 + 5, 0, 1, 99, 12345, 42]


_hp = op_calls.adam_hp


FLAGS = {
    "adamw": _hp(),
    "adam-l2": _hp(decoupled=False, weight_decay=0.1),
    "maximize-no-wd": _hp(maximize=True, weight_decay=0.0),
}


def _tensors(sizes, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * scale for n in sizes]


def case(fmt: str, sizes=SIZES, seed=1, step0=4) -> dict:
    """float32 params; moments in `fmt` encoded from random float32 moments."""
    params = _tensors(sizes, seed)
    m = _tensors(sizes, seed + 1, 0.1)
    v = [t.abs() * 0.01 for t in _tensors(sizes, seed + 2)]
    state = dict(params=params, state_steps=[torch.tensor(float(step0)) for _ in sizes],
                 sr_seeds=[torch.tensor(s, dtype=torch.int64) for s in SEEDS[:len(sizes)]])
    if fmt == "bfloat16":
        state.update(exp_avgs=[t.bfloat16() for t in m], exp_avg_sqs=[t.bfloat16() for t in v])
        return state
    half = torch.full((max(sizes),), 0x8000, dtype=torch.int64)
    enc_m = [q8_encode(t, half, False) for t in m]
    enc_v = [q8_encode(t.sqrt(), half, True) for t in v]
    state.update(exp_avgs=[c.to(torch.int8) for c, _ in enc_m],
                 exp_avg_sqs=[c.to(torch.uint8) for c, _ in enc_v],
                 exp_avg_scales=[s for _, s in enc_m], exp_avg_sq_scales=[s for _, s in enc_v])
    return state


def clone(state):
    return {k: [t.clone() for t in v] for k, v in state.items()}


def run_op(state, grads, hp, fmt):
    op_calls.adam_(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"], [],
                   state["state_steps"], sr_seeds=state["sr_seeds"], states=fmt,
                   exp_avg_scales=state.get("exp_avg_scales"),
                   exp_avg_sq_scales=state.get("exp_avg_sq_scales"), **hp)


def run_ref(state, grads, hp, fmt):
    adam_states_reference(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                          state["state_steps"], [int(s) for s in state["sr_seeds"]], fmt,
                          state.get("exp_avg_scales"), state.get("exp_avg_sq_scales"), **hp)


# ---- op level, bitwise against the reference ---------------------------------------------------

@pytest.mark.parametrize("flags", list(FLAGS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_matches_reference(isa, fmt, flags):
    hp = FLAGS[flags]
    state = case(fmt)
    ref = clone(state)
    for k in range(3):
        grads = _tensors(SIZES, 100 + k)
        run_op(state, grads, hp, fmt)
        run_ref(ref, grads, hp, fmt)
    assert_bitwise_equal(state, ref, isa)


@settings(max_examples=25, deadline=None)
@given(fmt=st.sampled_from(FORMATS), n=st.integers(0, 1100), seed=st.integers(0, 2**20),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e4]), wd=st.sampled_from([0.0, 0.1]),
       decoupled=st.booleans(), grad_scale=st.sampled_from([None, 8.0]))
def test_matches_reference_hypothesis(fmt, n, seed, scale, wd, decoupled, grad_scale):
    """Any length (whole and partial blocks, empty), gradient magnitudes down to where blocks
    fall below kQ8Tiny, L2 / decoupled decay, GradScaler's unscale."""
    state = case(fmt, sizes=[n], seed=seed)
    ref = clone(state)
    grads = [g * scale for g in _tensors([n], seed + 9)]
    hp = _hp(weight_decay=wd, decoupled=decoupled)
    if grad_scale is not None:
        hp["grad_scale"] = torch.tensor(grad_scale)
        grads = [g * grad_scale for g in grads]
    run_op(state, grads, hp, fmt)
    run_ref(ref, grads, hp, fmt)
    assert_bitwise_equal(state, ref)


@pytest.mark.parametrize("fmt", FORMATS)
def test_levels_and_threads_agree(restore_num_threads, fmt):
    """One tensor far above the parallel grain plus small ones: thread splits fall inside
    tensors (for 8 bits, at block boundaries); every (level, threads) gives the reference's
    bits."""
    sizes = [300_007, 5, 1000]
    state0 = case(fmt, sizes, seed=3)
    grads = _tensors(sizes, 33)
    ref = clone(state0)
    run_ref(ref, grads, _hp(), fmt)
    for level in ISA_LEVELS:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            state = clone(state0)
            with _ops.cpu_capability_override(level):
                run_op(state, grads, _hp(), fmt)
            assert_bitwise_equal(state, ref, f"{level} x {threads} threads")


def test_q8_nonfinite_block_is_nan_others_untouched(isa):
    """A NaN gradient in block 1: that block decodes to NaN (codes 0, scales NaN), blocks 0 and
    2 step as usual."""
    state = case("8bit", sizes=[3 * Q8_BLOCK])
    ref = clone(state)
    grads = _tensors([3 * Q8_BLOCK], 5)
    grads[0][Q8_BLOCK + 17] = math.nan
    run_op(state, grads, _hp(), "8bit")
    run_ref(ref, grads, _hp(), "8bit")
    assert_bitwise_equal(state, ref)
    for key in ("exp_avg_scales", "exp_avg_sq_scales"):
        s = state[key][0]
        assert torch.isnan(s[1]) and torch.isfinite(s[[0, 2]]).all()
    assert (state["exp_avgs"][0][Q8_BLOCK:2 * Q8_BLOCK] == 0).all()


def test_q8_stochastic_rounding_is_unbiased():
    """N = 2^16 elements whose new exp_avg lies between two codes: each rounds up with
    probability f, the fraction of its 16.16 fixed-point code (exact: the encoding adds 16
    uniform bits to it). The count is Binomial(N, f), allowed 6 standard deviations (+1): a
    correct generator exceeds that with probability < 2e-9, and the seed is fixed."""
    n = 1 << 16
    scale = torch.tensor(1 / 127, dtype=torch.float32)
    codes = torch.full((n,), 64, dtype=torch.int8)
    codes[::Q8_BLOCK] = 127  # element 0 of each block: its absmax
    grad = torch.zeros(n)
    grad[::Q8_BLOCK] = 0.4128  # its new m: (1 + 0.4128) / 2, so the others' codes are fractional
    state = dict(params=[torch.zeros(n)], state_steps=[torch.tensor(0.0)],
                 sr_seeds=[torch.tensor(2026)], exp_avgs=[codes],
                 exp_avg_sqs=[torch.full((n,), 255, dtype=torch.uint8)],
                 exp_avg_scales=[scale.repeat(n // Q8_BLOCK)],
                 exp_avg_sq_scales=[torch.ones(n // Q8_BLOCK)])
    ref = clone(state)
    hp = _hp(beta1=0.5, weight_decay=0.0)
    run_op(state, [grad], hp, "8bit")
    run_ref(ref, [grad], hp, "8bit")
    assert_bitwise_equal(state, ref)
    # the float32 values the kernel encodes: lerp with weight 0.5, then the block's inv16
    m_other = 64 * scale * 0.5
    m_max = 127 * scale + 0.5 * (torch.tensor(0.4128) - 127 * scale)
    inv16 = (127 / m_max) * 65536
    t = int(torch.floor(m_other * inv16))
    lo, f = t >> 16, (t & 0xFFFF) / 65536
    got = state["exp_avgs"][0].to(torch.int64).view(-1, Q8_BLOCK)[:, 1:].reshape(-1)
    assert ((got == lo) | (got == lo + 1)).all()
    count, total = int((got == lo + 1).sum()), got.numel()
    expected, sd = total * f, math.sqrt(total * f * (1 - f))
    assert 0.05 < f < 0.95 and abs(count - expected) <= 6 * sd + 1, (count, expected, sd)


# ---- the conversion ops -------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 5000])
def test_conversions_match_reference_and_bounds(isa, n):
    g = torch.Generator().manual_seed(n)
    m = torch.randn(n, generator=g) * torch.logspace(-6, 0, max(n, 1))[:n]
    v = torch.rand(n, generator=g) * torch.logspace(-8, 0, max(n, 1))[:n]
    half = torch.full((n,), 0x8000, dtype=torch.int64)
    for x, sqrt_map, dtype in ((m, False, torch.int8), (v, True, torch.uint8)):
        codes, scales = torch.ops.pyoptim.quantize_8bit(x, sqrt_map)
        ref_codes, ref_scales = q8_encode(sqrt_rn(x) if sqrt_map else x, half, sqrt_map)
        assert codes.dtype == dtype and codes.shape == x.shape
        assert_bitwise_equal(codes.to(torch.int64), ref_codes)
        assert_bitwise_equal(scales, ref_scales)
        back = torch.ops.pyoptim.dequantize_8bit(codes, scales, sqrt_map)
        assert_bitwise_equal(back, q8_decode(codes, scales, sqrt_map))
        if n == 0:
            continue
        per = scales.repeat_interleave(Q8_BLOCK)[:n]  # each element's block scale
        if sqrt_map:  # sqrt(v): within half a level, or one level for roots below the first
            err = (back.sqrt() - x.sqrt()).abs()
            assert (err <= per * Q8_ROUND_TRIP["sqrt_levels"]).all()
        else:
            assert ((back - x).abs() <= per * Q8_ROUND_TRIP["signed_levels"]).all()


def test_conversion_errors():
    with pytest.raises(TypeError, match="float32"):
        torch.ops.pyoptim.quantize_8bit(torch.zeros(3, dtype=torch.float64), False)
    codes, scales = torch.ops.pyoptim.quantize_8bit(torch.zeros(300), False)
    with pytest.raises(TypeError, match="expected Byte"):
        torch.ops.pyoptim.dequantize_8bit(codes, scales, True)
    with pytest.raises(ValueError, match="block scales"):
        torch.ops.pyoptim.dequantize_8bit(codes, scales[:1], False)


# ---- bad input ---------------------------------------------------------------------------------

def _bad(fmt, mutate):
    state = case(fmt, sizes=[300, 7])
    mutate(state)
    return state


BAD = {
    "bf16-wrong-moment-dtype": ("bfloat16", lambda s: s["exp_avgs"].__setitem__(
        1, s["exp_avgs"][1].float()), TypeError, "exp_avgs\\[1\\] has dtype"),
    "q8-sq-signed": ("8bit", lambda s: s["exp_avg_sqs"].__setitem__(
        0, s["exp_avg_sqs"][0].to(torch.int8)), TypeError, "exp_avg_sqs\\[0\\] has dtype"),
    "q8-short-scales": ("8bit", lambda s: s["exp_avg_sq_scales"].__setitem__(
        0, s["exp_avg_sq_scales"][0][:1]), ValueError, "block scales for params\\[0\\]"),
    "q8-missing-scales": ("8bit", lambda s: s["exp_avg_scales"].pop(), ValueError,
                          "exp_avg_scales"),
    "no-seed": ("bfloat16", lambda s: s["sr_seeds"].pop(), ValueError, "sr_seeds"),
    "fp64-param": ("bfloat16", lambda s: s["params"].__setitem__(0, s["params"][0].double()),
                   ValueError, "float32 params"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_writes_nothing(name):
    fmt, mutate, exc, match = BAD[name]
    state = _bad(fmt, mutate)
    before = snapshot(state)
    with pytest.raises(exc, match=match):
        run_op(state, [torch.randn_like(p) for p in state["params"]], _hp(), fmt)
    assert_bitwise_equal(state, before)


def test_amsgrad_rejected_by_the_op():
    state = case("bfloat16", sizes=[5])
    with pytest.raises(ValueError, match="do not support"):
        op_calls.adam_(state["params"], _tensors([5], 1), state["exp_avgs"],
                       state["exp_avg_sqs"], [torch.zeros(5).bfloat16()], state["state_steps"],
                       sr_seeds=state["sr_seeds"], states="bfloat16", **_hp(amsgrad=True))


# ---- optimizer classes ---------------------------------------------------------------------------

def _model(seed=0, sizes=(37, 300, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g)) for n in sizes]


def _set_grads(params, k):
    g = torch.Generator().manual_seed(1000 + k)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("cls", [pyoptim.Adam, pyoptim.AdamW])
@pytest.mark.parametrize("fmt", FORMATS)
def test_optimizer_matches_reference(cls, fmt):
    torch.manual_seed(5)
    params = _model()
    opt = cls(params, lr=1e-2, weight_decay=0.05,
              state_dtype=torch.bfloat16 if fmt == "bfloat16" else fmt)
    assert opt.param_groups[0]["state_dtype"] == fmt
    ref = case(fmt, sizes=[p.numel() for p in params], step0=0)
    ref["params"] = [p.detach().clone() for p in params]
    for key in ("exp_avgs", "exp_avg_sqs", "exp_avg_scales", "exp_avg_sq_scales"):
        for t in ref.get(key, []):
            t.zero_()
    hp = _hp(weight_decay=0.05, decoupled=cls is pyoptim.AdamW)
    for k in range(4):
        _set_grads(params, k)
        opt.step()
        ref["sr_seeds"] = [opt.state[p]["sr_seed"] for p in params]
        run_ref(ref, [p.grad for p in params], hp, fmt)
    for i, p in enumerate(params):
        st_ = opt.state[p]
        assert_bitwise_equal(p.detach(), ref["params"][i])
        assert_bitwise_equal(st_["exp_avg"], ref["exp_avgs"][i])
        assert_bitwise_equal(st_["exp_avg_sq"], ref["exp_avg_sqs"][i])
        if fmt == "8bit":
            assert st_["exp_avg"].dtype == torch.int8 and st_["exp_avg_sq"].dtype == torch.uint8
            assert_bitwise_equal(st_["exp_avg_scale"], ref["exp_avg_scales"][i])


@pytest.mark.parametrize("fmt", FORMATS)
def test_checkpoint_resume_is_bitwise(fmt):
    """k steps, state_dict through torch.save / torch.load, a fresh optimizer loads it and
    continues: the same bits as the uninterrupted run (the moments keep their format: torch's
    load_state_dict would cast them to float32)."""
    def fresh(seed):
        torch.manual_seed(seed)
        params = _model()
        return params, pyoptim.AdamW(params, lr=1e-3, state_dtype=fmt)

    params, opt = fresh(0)
    for k in range(6):
        _set_grads(params, k)
        opt.step()
    straight = [p.detach().clone() for p in params]

    params, opt = fresh(0)
    for k in range(3):
        _set_grads(params, k)
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    params2, opt2 = fresh(123)  # another generator state: the seeds come from the checkpoint
    with torch.no_grad():
        for p, t in zip(params2, ckpt["model"]):
            p.copy_(t)
    opt2.load_state_dict(ckpt["opt"])
    dtypes = ((torch.bfloat16, torch.bfloat16) if fmt == "bfloat16" else
              (torch.int8, torch.uint8))
    for p in params2:
        st_ = opt2.state[p]
        assert (st_["exp_avg"].dtype, st_["exp_avg_sq"].dtype) == dtypes
        assert st_["sr_seed"].dtype == torch.int64
    for k in range(3, 6):
        _set_grads(params2, k)
        opt2.step()
    # the resumed steps moved the params (a step that wrote nothing would agree too)
    assert any_changed(ckpt["model"], [p.detach() for p in params2])
    for a, b in zip(params2, straight):
        assert_bitwise_equal(a.detach(), b)


def _decoded(opt, p, key):
    """The held moment in float32, decoded by the reference (torch_state_dict() decodes with
    pyoptim's own dequantize_8bit: an expected value from that op would check it against itself)."""
    st_ = opt.state[p]
    value = st_[key]
    if value.dtype in (torch.int8, torch.uint8):
        return q8_decode(value, st_[key + "_scale"], key == "exp_avg_sq")
    return value.float()


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_optim_loads_pyoptim_checkpoint(fmt):
    """bfloat16 states: torch.optim.AdamW loads the state_dict itself (casting the moments to
    float32); 8 bits: torch_state_dict() is torch's format, the moments decoded."""
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, state_dtype=fmt)
    _set_grads(params, 0)
    opt.step()
    sd = opt.state_dict() if fmt == "bfloat16" else opt.torch_state_dict()
    if fmt == "8bit":
        assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
        assert "state_dtype" not in sd["param_groups"][0]
    params_t = [torch.nn.Parameter(p.detach().clone()) for p in params]
    topt = torch.optim.AdamW(params_t, lr=1e-3)
    topt.load_state_dict(sd)
    for p, pt in zip(params, params_t):
        for key in ("exp_avg", "exp_avg_sq"):
            assert topt.state[pt][key].dtype == torch.float32
            assert _decoded(opt, p, key).any(), key  # the step wrote the moment
            assert_bitwise_equal(topt.state[pt][key], _decoded(opt, p, key))
    _set_grads(params_t, 1)
    topt.step()
    assert all(torch.isfinite(p).all() for p in params_t)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=dtype_id)
@pytest.mark.parametrize("cls,kwargs", [(pyoptim.AdamW, {}), (pyoptim.SGD, dict(momentum=0.9))],
                         ids=["adamw", "sgd"])
def test_8bit_checkpoint_with_scales_in_another_dtype(cls, kwargs, dtype):
    """An 8-bit checkpoint whose floating tensors were converted (to float64, float16) loads
    with its block scales in float32, as the ops read them (torch's load casts floating state
    to the float32 param's dtype), and resumes as from the float32 values. (The scales were
    kept as saved, and every later step raised TypeError 'block scales are float32'.)"""
    params = _model()
    opt = cls(params, lr=1e-3, state_dtype="8bit", **kwargs)
    _set_grads(params, 0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    for state in sd["state"].values():
        for key, value in state.items():
            if key.endswith("_scale"):
                state[key] = value.to(dtype)
    ref = copy.deepcopy(opt.state_dict())
    for state in ref["state"].values():  # what the converted scales hold, in float32
        for key, value in state.items():
            if key.endswith("_scale"):
                state[key] = value.to(dtype).float()
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = cls(params2, lr=1e-3, state_dtype="8bit", **kwargs)
    opt2.load_state_dict(sd)
    params3 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt3 = cls(params3, lr=1e-3, state_dtype="8bit", **kwargs)
    opt3.load_state_dict(ref)
    _set_grads(params2, 1)
    _set_grads(params3, 1)
    opt2.step()
    opt3.step()
    assert_bitwise_equal(snapshot(params2), snapshot(params3))
    assert_bitwise_equal(snapshot(opt2.state_dict()), snapshot(opt3.state_dict()))


def test_torch_state_dict_keeps_state_of_no_param():
    """A loaded checkpoint's state of an id that is no param of the optimizer stays in
    state_dict() as torch keeps it, and torch_state_dict() exports it as it is. (It raised
    KeyError.)"""
    params = _model()
    opt = pyoptim.AdamW(params, lr=1e-3, state_dtype="8bit")
    _set_grads(params, 0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    stale = {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, dtype=torch.float64)}
    sd["state"][99] = stale
    opt.load_state_dict(sd)
    exported = opt.torch_state_dict()
    assert_bitwise_equal(exported["state"][99], stale)
    assert set(exported["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_loads_torch_checkpoint(fmt):
    """A torch.optim checkpoint (float32 moments) into reduced states: converted at the next
    step (bfloat16 rounded to nearest; 8 bits by quantize_8bit), then stepped."""
    params = _model()
    topt = torch.optim.AdamW(params, lr=1e-3)
    _set_grads(params, 0)
    topt.step()
    sd = topt.state_dict()
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = pyoptim.AdamW(params2, lr=1e-3, state_dtype=fmt)
    opt.load_state_dict(copy.deepcopy(sd))  # (state_dict shares torch's step tensors)
    assert opt.param_groups[0]["state_dtype"] == fmt
    _set_grads(params2, 1)
    opt.step()
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ropt = torch.optim.AdamW(ref, lr=1e-3)
    ropt.load_state_dict(copy.deepcopy(sd))
    _set_grads(ref, 1)
    ropt.step()
    for p, r in zip(params2, ref):
        assert opt.state[p]["exp_avg"].dtype == (torch.bfloat16 if fmt == "bfloat16" else
                                                 torch.int8)
        # the update is lr * m / sqrt(v): close to torch's after one conversion
        torch.testing.assert_close(p.detach(), r.detach(), atol=LOAD_ATOL[fmt], rtol=0)


LOAD_ATOL = {"bfloat16": 1e-3 * Q8_LOAD_STEP["bfloat16"], "8bit": 1e-3 * Q8_LOAD_STEP["8bit"]}

ERRORS = {
    "amsgrad": (dict(amsgrad=True), torch.float32, "amsgrad"),
    "master": (dict(master_weights=True), torch.bfloat16, "master_weights"),
    "bf16-params": ({}, torch.bfloat16, "needs float32 params"),
    "fp64-params": ({}, torch.float64, "needs float32 params"),
    "differentiable": (dict(differentiable=True), torch.float32, "differentiable"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_combinations_raise_at_construction(name, fmt):
    kw, dtype, match = ERRORS[name]
    params = [torch.nn.Parameter(t.to(dtype)) for t in _model()]
    with pytest.raises(ValueError, match=match):
        pyoptim.AdamW(params, state_dtype=fmt, **kw)


def test_invalid_values_and_other_classes():
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        pyoptim.Adam(_model(), state_dtype=torch.float16)
    with pytest.raises(ValueError, match="Invalid state_dtype"):
        pyoptim.Adam(_model(), state_dtype="4bit")
    with pytest.raises(TypeError, match="state_dtype"):  # (SGD takes it: tests/test_sgd_modes.py)
        pyoptim.Adamax(_model(), state_dtype="8bit")
    opt = pyoptim.AdamW(_model(), state_dtype="8bit")
    with pytest.raises(ValueError, match="float32 params"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3).bfloat16())]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "state_dtype": None})
    assert "state_dtype" not in opt.param_groups[1]  # torch's state for that group
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()  # one call, both formats
    assert opt.state[opt.param_groups[1]["params"][0]]["exp_avg"].dtype == torch.float32


def test_default_is_torchs_behaviour():
    opt = pyoptim.AdamW(_model())
    assert opt.defaults == torch.optim.AdamW(_model()).defaults
    assert set(opt.param_groups[0]) == set(torch.optim.AdamW(_model()).param_groups[0])


def test_lazy_sparse_rejects_reduced_states():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = pyoptim.AdamW(emb.parameters(), lazy_sparse=True, state_dtype="8bit")
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="state_dtype='8bit' does not support sparse"):
        opt.step()


# A layout and the same values in it: transposed 2-D, channels-last 4-D.
LAYOUTS = {
    "transposed": ((40, 70), lambda t: t.t().contiguous().t()),
    "channels_last": ((6, 5, 7, 9), lambda t: t.contiguous(memory_format=torch.channels_last)),
}
Q8_OPTIMIZERS = {
    "adamw": lambda ps: pyoptim.AdamW(ps, lr=1e-2, state_dtype="8bit"),
    "sgd": lambda ps: pyoptim.SGD(ps, lr=1e-2, momentum=0.9, state_dtype="8bit"),
}


@pytest.mark.parametrize("name", list(Q8_OPTIMIZERS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_q8_blocks_are_row_major_in_any_layout(name, layout):
    """8-bit blocks are row-major (Note [Reduced-precision optimizer states]): a param in
    another layout steps bitwise as a contiguous param holding the same values, and its state
    and exported moments are the twin's, with grads in its layout, with codes in its layout too
    (as a checkpoint may hold them), and with a grad in another layout. (The kernel once walked
    such a param in memory order, so blocks mixed other elements than the conversions decode:
    its exported moments were off by their own magnitude.)"""
    shape, relayout = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(shape, generator=gen)
    rows = torch.logspace(-4, 2, shape[0]).view(-1, *[1] * (len(shape) - 1))
    grads = [torch.randn(shape, generator=gen) * rows for _ in range(5)]

    def run(lay):
        p = torch.nn.Parameter(lay(w.clone()))
        opt = Q8_OPTIMIZERS[name]([p])
        torch.manual_seed(0)  # the same sr_seed
        for k, g in enumerate(grads):
            p.grad = lay(g.clone()) if k < 4 else g.clone()  # last: a grad in another layout
            opt.step()
            if k == 1:  # codes laid out as the param
                state = opt.state[p]
                for key, codes in state.items():
                    if codes.dtype in (torch.int8, torch.uint8):
                        state[key] = lay(codes.clone())
        return p, opt

    (p, opt), (twin, twin_opt) = run(relayout), run(lambda t: t)
    assert p.stride() != twin.stride()
    assert_bitwise_equal([p.detach().contiguous()], [twin.detach()], "param")
    state, twin_state = opt.state[p], twin_opt.state[twin]
    assert state.keys() == twin_state.keys()
    for key in state:
        assert_bitwise_equal([state[key].contiguous()], [twin_state[key]], key)
    exported = opt.torch_state_dict()["state"][0]
    twin_exported = twin_opt.torch_state_dict()["state"][0]
    for key in exported:
        assert_bitwise_equal([exported[key].contiguous()], [twin_exported[key].contiguous()], key)


@pytest.mark.parametrize("name", list(Q8_OPTIMIZERS))
def test_q8_meta_params_convert_like_torchs_state(name):
    """Params on the meta device with 8-bit states: every conversion (torch_state_dict's export,
    a torch.optim checkpoint loaded, state_dtype switched off) gives state laid out as
    torch.optim's on the meta device; they ran the CPU conversion ops on meta tensors
    (NotImplementedError: "Cannot copy out of meta tensor")."""
    def meta_params():
        with torch.device("meta"):
            return [torch.nn.Parameter(torch.empty(300, 7)), torch.nn.Parameter(torch.empty(5))]

    def step(opt, params):
        for p in params:
            p.grad = torch.empty_like(p)
        opt.step()

    def layout(state):
        return {k: (v.device, v.dtype, tuple(v.shape)) for k, v in state.items()
                if k != "step"}

    tparams = meta_params()
    topt = (torch.optim.AdamW(tparams, lr=1e-2) if name == "adamw" else
            torch.optim.SGD(tparams, lr=1e-2, momentum=0.9))
    step(topt, tparams)
    torch_layout = [layout(s) for s in topt.state_dict()["state"].values()]
    params = meta_params()
    opt = Q8_OPTIMIZERS[name](params)
    step(opt, params)
    assert opt.state[params[0]]["exp_avg" if name == "adamw" else "momentum_buffer"].is_meta
    assert [layout(s) for s in opt.torch_state_dict()["state"].values()] == torch_layout
    params = meta_params()  # a torch.optim checkpoint into an 8-bit optimizer
    opt = Q8_OPTIMIZERS[name](params)
    opt.load_state_dict(topt.state_dict())
    step(opt, params)
    codes = opt.state[params[1]]["exp_avg_sq" if name == "adamw" else "momentum_buffer"]
    assert codes.is_meta and codes.dtype == (torch.uint8 if name == "adamw" else torch.int8)
    opt.param_groups[0]["state_dtype"] = None  # switched off: decoded as torch's state
    step(opt, params)
    assert [layout(opt.state[p]) for p in params] == torch_layout
