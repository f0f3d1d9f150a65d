"""Op level: torch.ops.pyoptim.adam_ against the plain-PyTorch reference, at every ISA level.

Property tests (hypothesis): several steps reusing state, every dtype and flag, grad_scale and
found_inf; error against the float64 oracle bounded by tests/tolerances.py, and the distance to
torch's division form of the denominator (the kernel multiplies by a reciprocal) bounded by its
DIVISION_FORM rows. Metamorphic tests (bitwise): split == whole, maximize(g) == minimize(-g),
AdamW(wd=0) == Adam, exact unscale, lr_tensor == lr, and any layout == contiguous.
"""

from __future__ import annotations

import dataclasses
import platform

import op_calls
import pytest
import torch
from conftest import dtype_id
from helpers import any_changed, assert_bitwise_equal, bitwise_equal, normwise_error, snapshot, ulp
from hypothesis import given
from hypothesis import strategies as st
from reference import adam_reference, opmath_dtype
from strategies import (
    DTYPES,
    AdamCase,
    adam_cases,
    adam_hparams,
    clone_state,
    dtypes,
    op_args,
    seeds,
)
from tolerances import DIVISION_FORM_DENOM_ULPS, division_form_param_bound, op_tolerance

from pyoptim import _ops

STATE_KEYS = ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")


def run_kernel(case: AdamCase, state: dict, hp: dict | None = None, grads_fn=None) -> None:
    for k in range(case.steps):
        grads = grads_fn(k) if grads_fn else case.grads(k)
        op_calls.adam_(*op_args(state, grads), **(hp or case.hp), **case.extras(k))


def oracle_run(case: AdamCase, before: dict, hp: dict | None = None, grads_fn=None) -> dict:
    """The float64 oracle of `case` from the state `before`."""
    oracle = clone_state(before, torch.float64)
    for k in range(case.steps):
        grads = grads_fn(k) if grads_fn else case.grads(k)
        adam_reference(*op_args(oracle, [g.double() for g in grads]), **(hp or case.hp),
                       **case.extras(k), compute_dtype=torch.float64, torch_kernels=True)
    return oracle


def assert_stepped(case: AdamCase, before: dict, after: dict, oracle: dict | None = None,
                   hp: dict | None = None) -> None:
    """The call did something: step counts advanced, and exp_avg and the params moved wherever
    the oracle says the move is visible in the dtype (a 1e-5 step on a bfloat16 1.0 is not, nor
    is exp_avg's (1 - beta1) (g - m) with beta1 = 0.998 and |g| ~ 1e-3)."""
    counted = sum(1 for s in case.skips if not s)
    assert counted > 0
    for s0, s1 in zip(before["state_steps"], after["state_steps"]):
        assert s1.item() == s0.item() + counted
    if oracle is None:
        oracle = oracle_run(case, before, hp)
    eps = torch.finfo(case.dtype).eps
    for key in ("exp_avgs", "params"):
        # a move by more than 2 eps |x0| is more than an ulp of x0: the rounded result moves too
        visible = any(
            bool(((o - x0.double()).abs() > 2 * eps * x0.double().abs()).any())
            for x0, o in zip(before[key], oracle[key]) if x0.numel())
        if visible:
            assert any_changed(before[key], after[key]), f"{key} did not change"


@given(case=adam_cases())
def test_adam_matches_reference(isa, case):
    state0 = case.state()
    kern, ref, oracle = clone_state(state0), clone_state(state0), clone_state(state0, torch.float64)
    for k in range(case.steps):
        grads = case.grads(k)
        extras = case.extras(k)
        op_calls.adam_(*op_args(kern, grads), **case.hp, **extras)
        adam_reference(*op_args(ref, grads), **case.hp, **extras)
        adam_reference(*op_args(oracle, [g.double() for g in grads]), **case.hp, **extras,
                       compute_dtype=torch.float64, torch_kernels=True)

    tol = op_tolerance("adam", case.dtype)
    for key in STATE_KEYS:
        for i, (x, r, o, x0) in enumerate(zip(kern[key], ref[key], oracle[key], state0[key])):
            assert x.dtype == case.dtype and x.shape == x0.shape
            e_kernel = normwise_error(x, o, x0)
            e_ref = normwise_error(r, o, x0)
            bound = tol.bound(e_ref, case.dtype)
            assert e_kernel <= bound, (
                f"{key}[{i}]: kernel error {e_kernel:.3g} > {bound:.3g} "
                f"(reference error {e_ref:.3g}; {tol.why})")
    if tol.bitwise_to_reference:
        assert_bitwise_equal({k: kern[k] for k in STATE_KEYS}, {k: ref[k] for k in STATE_KEYS},
                             "kernel vs same-precision reference")
    assert_bitwise_equal(kern["state_steps"], ref["state_steps"], "state_steps")
    assert_stepped(case, state0, kern, oracle)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("beta1", [0.0, 0.3, 0.5, 0.50000006, 0.49999997, 0.9])
def test_lerp_branch_boundary(isa, dtype, beta1):
    """torch.lerp switches formula at |weight| = 0.5 (weight = 1 - beta1, in opmath): both sides
    of the switch and the switch itself, deterministically, against the reference."""
    hp = dict(lr=1e-2, beta1=beta1, beta2=0.99, weight_decay=0.0, eps=1e-8, amsgrad=False,
              maximize=False, decoupled=False)
    case = AdamCase(sizes=[33, 70], dtype=dtype, hp=hp, seed=7, step0=3, skips=(False, False))
    state0 = case.state()
    kern, ref = clone_state(state0), clone_state(state0)
    for k in range(case.steps):
        grads = case.grads(k)
        op_calls.adam_(*op_args(kern, grads), **hp)
        adam_reference(*op_args(ref, grads), **hp)
    tol = op_tolerance("adam", dtype)
    oracle = oracle_run(case, state0)
    for key in STATE_KEYS:
        for x, r, o, x0 in zip(kern[key], ref[key], oracle[key], state0[key]):
            assert normwise_error(x, o, x0) <= tol.bound(normwise_error(r, o, x0), dtype)
            if tol.bitwise_to_reference:
                assert bitwise_equal(x, r), key
    assert_stepped(case, state0, kern, oracle)


@given(case=adam_cases(skips=False))
def test_found_inf_skips_everything(isa, case):
    """found_inf != 0: nothing is written, the step is not counted; found_inf == 0 steps."""
    state = case.state()
    grads = case.grads(0)
    before = snapshot(state)
    for found in (1.0, float("inf"), float("nan")):
        op_calls.adam_(*op_args(state, grads), **case.hp,
                   grad_scale=torch.tensor(1.0), found_inf=torch.tensor(found))
        assert_bitwise_equal(state, before, f"found_inf={found}")
    # the case's grad_scale too (its grads are scaled; assert_stepped's oracle unscales them)
    op_calls.adam_(*op_args(state, grads), **case.hp,
               **dict(case.extras(0), found_inf=torch.tensor(0.0)))
    single = dataclasses.replace(case, skips=(False,))
    assert_stepped(single, before, state)


@st.composite
def split_cases(draw):
    n = draw(st.integers(min_value=2, max_value=700))
    cuts = sorted(draw(st.lists(st.integers(min_value=1, max_value=n - 1), min_size=1,
                                max_size=4, unique=True)))
    return n, cuts, draw(dtypes), draw(adam_hparams()), draw(seeds)


@given(split=split_cases())
def test_split_into_parts_equals_whole(isa, split):
    """Stepping pieces of a tensor as separate params gives the whole tensor's bits."""
    n, cuts, dtype, hp, seed = split
    case = AdamCase(sizes=[n], dtype=dtype, hp=hp, seed=seed, step0=9, skips=(False, False))
    whole = case.state()
    before = snapshot(whole)
    bounds = [0, *cuts, n]

    def parts_of(t):
        return [t[a:b].clone() for a, b in zip(bounds, bounds[1:])]

    parts = {key: [p for t in lst for p in parts_of(t)] for key, lst in whole.items()
             if key != "state_steps"}
    parts["state_steps"] = [whole["state_steps"][0].clone() for _ in bounds[1:]]
    run_kernel(case, whole)
    run_kernel(case, parts, grads_fn=lambda k: parts_of(case.grads(k)[0]))
    for key in STATE_KEYS:
        if whole[key]:
            assert bitwise_equal(torch.cat(parts[key]), whole[key][0]), key
    assert_stepped(case, before, whole)


@given(case=adam_cases(skips=False))
def test_maximize_equals_minimize_negated_grad(isa, case):
    hp_max = dict(case.hp, maximize=True)
    hp_min = dict(case.hp, maximize=False)
    a, b = case.state(), case.state()
    before = snapshot(a)
    run_kernel(case, a, hp_max)
    run_kernel(case, b, hp_min, grads_fn=lambda k: [-g for g in case.grads(k)])
    assert_bitwise_equal(a, b)
    assert_stepped(case, before, a, hp=hp_max)


@given(case=adam_cases(skips=False))
def test_adamw_without_weight_decay_equals_adam(isa, case):
    adamw = dict(case.hp, decoupled=True, weight_decay=0.0)
    adam = dict(case.hp, decoupled=False, weight_decay=0.0)
    a, b = case.state(), case.state()
    before = snapshot(a)
    run_kernel(case, a, adamw)
    run_kernel(case, b, adam)
    assert_bitwise_equal(a, b)
    assert_stepped(case, before, a, hp=adam)


@given(case=adam_cases(skips=False), log2_scale=st.integers(min_value=1, max_value=4))
def test_power_of_two_grad_scale_unscales_exactly(isa, case, log2_scale):
    """grads * 2^k with grad_scale=2^k == unscaled grads, bit for bit (GradScaler's scales)."""
    scale = 2.0**log2_scale
    a, b = case.state(), case.state()
    before = snapshot(a)
    for k in range(case.steps):
        grads = case.grads(k)
        op_calls.adam_(*op_args(a, [g * scale for g in grads]), **case.hp,
                   grad_scale=torch.tensor(scale), found_inf=torch.tensor(0.0))
        op_calls.adam_(*op_args(b, grads), **case.hp)
    assert_bitwise_equal(a, b)
    assert_stepped(case, before, a)


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=["lr-f32", "lr-f64"])
@given(case=adam_cases(skips=False))
def test_lr_tensor_equals_lr(isa, lr_dtype, case):
    """lr_tensor holds the learning rate in its own dtype: same bits as lr=<that value>."""
    lr_t = torch.tensor([case.hp["lr"]], dtype=lr_dtype)
    hp_float = dict(case.hp, lr=lr_t.item())
    hp_tensor = dict(case.hp, lr=0.0)  # ignored when lr_tensor is given
    a, b = case.state(), case.state()
    before = snapshot(a)
    for k in range(case.steps):
        grads = case.grads(k)
        # the case's grad_scale too: its grads are scaled, and assert_stepped's oracle unscales
        op_calls.adam_(*op_args(a, grads), **hp_tensor, **case.extras(k), lr_tensor=lr_t)
        op_calls.adam_(*op_args(b, grads), **hp_float, **case.extras(k))
    assert_bitwise_equal(a, b)
    assert_stepped(case, before, a, hp=hp_float)


LAYOUTS = {
    # name: (param/state maker, grad maker) from a contiguous (rows, cols) tensor
    "transposed": (lambda t: t.t().contiguous().t(), lambda t: t.t().contiguous().t()),
    "grad-strides-differ": (lambda t: t.clone(), lambda t: t.t().contiguous().t()),
    "strided-view": (lambda t: _strided_view(t), lambda t: t.clone()),
}


def _strided_view(t):
    """A non-dense view with t's values: every other column of a wider buffer."""
    buf = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
    v = buf[:, ::2]
    v.copy_(t)
    return v


@pytest.mark.parametrize("layout", list(LAYOUTS))
@given(dtype=dtypes, hp=adam_hparams(), seed=seeds,
       shape=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_any_layout_equals_contiguous(isa, layout, dtype, hp, seed, shape):
    """Transposed params, grads with other strides, non-dense views: same bits as contiguous,
    written into the caller's own tensors (views stay views)."""
    make, make_grad = LAYOUTS[layout]
    rows, cols = shape
    case = AdamCase(sizes=[rows * cols], dtype=dtype, hp=hp, seed=seed, step0=1, skips=(False,))
    flat = case.state()
    dense = {k: [t.view(rows, cols) if k != "state_steps" else t for t in v]
             for k, v in flat.items()}
    before = snapshot(dense)
    odd = {k: [make(t) if k != "state_steps" else t.clone() for t in v] for k, v in dense.items()}
    keep = [t for k in STATE_KEYS for t in odd[k]]  # the caller's tensors must be updated in place
    g = case.grads(0)[0].view(rows, cols)
    op_calls.adam_(*op_args(dense, [g]), **hp)
    op_calls.adam_(*op_args(odd, [make_grad(g)]), **hp)
    for key in STATE_KEYS:
        for x, y in zip(dense[key], odd[key]):
            assert bitwise_equal(x, y.contiguous()), key
    assert all(a is b for a, b in zip(keep, [t for k in STATE_KEYS for t in odd[k]]))
    assert_stepped(case, {k: [t.flatten() for t in v] for k, v in before.items()},
                   {k: [t.flatten() for t in v] for k, v in dense.items()})


@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64], ids=["step-f32", "step-f64"])
def test_step_count_dtypes(isa, step_dtype):
    """torch uses float64 step tensors when the default dtype is float64."""
    case = AdamCase(sizes=[33], dtype=torch.float32, seed=1, step0=0, skips=(False,),
                    hp=dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                            amsgrad=False, maximize=False, decoupled=False))
    a = case.state()
    a["state_steps"] = [torch.tensor(0.0, dtype=step_dtype)]
    b = case.state()
    before = snapshot(b)
    run_kernel(case, a)
    run_kernel(case, b)
    assert a["state_steps"][0].dtype == step_dtype and a["state_steps"][0].item() == 1.0
    assert_bitwise_equal(a["params"], b["params"])
    assert_stepped(case, before, b)


def test_each_level_runs_its_own_kernel_table():
    """Under each override the CPU ops call that level's own kernel table (each ISA library
    fills in its own level, so kernel_table_isa() names the code that runs, not the level asked
    for), before and after a step; the levels' results come from different tables (so the
    bitwise agreement of tests/test_isa_agreement.py compares different code) and agree; a level
    this CPU cannot run is refused, not run at a lower level."""
    case = AdamCase(sizes=[7, 33, 4099], dtype=torch.float32, seed=5, step0=3,
                    skips=(False, False),
                    hp=dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8,
                            amsgrad=True, maximize=False, decoupled=True))
    state0 = case.state()
    tables, results = {}, {}
    for level in _ops.available_cpu_capabilities():
        with _ops.cpu_capability_override(level):
            before_step = _ops.kernel_table_isa()
            state = clone_state(state0)
            run_kernel(case, state)
            tables[level] = (before_step, _ops.kernel_table_isa())
        assert tables[level] == (level, level)
        results[level] = state
    assert "scalar" in tables and _ops.max_cpu_capability() in tables
    assert len({table for table, _ in tables.values()}) == len(tables)
    base = results["scalar"]
    assert_stepped(case, state0, base)
    for level, state in results.items():
        assert_bitwise_equal(state, base, f"{level} vs scalar")
    current = _ops.kernel_table_isa()
    for level in _ops.CPU_LEVELS:
        if level not in tables:
            with pytest.raises(ValueError, match="cannot run"):
                with _ops.cpu_capability_override(level):
                    pass
            assert _ops.kernel_table_isa() == current


def test_cpu_levels_are_the_target_architectures():
    """The build has its target's levels (setup.py ARCH_LEVELS), lowest first; a level of
    another architecture is refused, an unknown name gets the list of this build's levels."""
    machine = platform.machine().lower()
    x86, arm = ("scalar", "avx2", "avx512"), ("scalar", "neon")
    expected = {"x86_64": x86, "amd64": x86, "aarch64": arm, "arm64": arm}.get(machine, ("scalar",))
    assert _ops.CPU_LEVELS == expected
    assert _ops.max_cpu_capability() in _ops.CPU_LEVELS
    other = next(lvl for lvl in ("neon", "avx2") if lvl not in _ops.CPU_LEVELS)
    with pytest.raises(ValueError, match=f"cannot run the {other} kernels"):
        with _ops.cpu_capability_override(other):
            pass
    listed = ", ".join(_ops.CPU_LEVELS[:-1]) + " or " if len(_ops.CPU_LEVELS) > 1 else ""
    with pytest.raises(ValueError, match=f"expected {listed}{_ops.CPU_LEVELS[-1]}"):
        with _ops.cpu_capability_override("sse"):
            pass


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@given(data=st.data())
def test_adam_within_bound_of_torch_division_form(isa, dtype, data):
    """The kernel's denom multiplies by 1 / sqrt(bias_correction2) where torch divides by
    bias_correction2 ** 0.5 (Note [One division per element]). Each step, from the kernel's
    current state, against the same-precision reference in torch's division form: the moments
    and step counts bitwise equal, each param within tolerances.division_form_param_bound of
    it (derived, elementwise), and its premise: the reciprocal form's denom (the kernel's, bit
    for bit, see test_adam_matches_reference) within DIVISION_FORM_DENOM_ULPS of torch's."""
    case = data.draw(adam_cases(dtype=dtype))
    t = opmath_dtype(dtype)
    kern = case.state()
    before = snapshot(kern)
    for k in range(case.steps):
        grads, extras = case.grads(k), case.extras(k)
        div, rec = clone_state(kern), clone_state(kern)
        div_trace, rec_trace = {}, {}
        adam_reference(*op_args(div, grads), **case.hp, **extras, division_form=True,
                       trace=div_trace)
        adam_reference(*op_args(rec, grads), **case.hp, **extras, trace=rec_trace)
        op_calls.adam_(*op_args(kern, grads), **case.hp, **extras)
        assert_bitwise_equal(kern["params"], rec["params"], f"step {k}: reciprocal form")
        assert_bitwise_equal({key: kern[key] for key in STATE_KEYS if key != "params"},
                             {key: div[key] for key in STATE_KEYS if key != "params"},
                             f"step {k}: moments")
        assert_bitwise_equal(kern["state_steps"], div["state_steps"], "state_steps")
        for i, (x, r) in enumerate(zip(kern["params"], div["params"])):
            if i not in div_trace.get("update", {}):  # a skipped step writes nothing
                assert_bitwise_equal(x, r, f"step {k}: skipped param {i}")
                continue
            d_rec, d_div = rec_trace["denom"][i], div_trace["denom"][i]
            ulps = (d_rec.double() - d_div.double()).abs() / ulp(
                torch.maximum(d_rec.abs(), d_div.abs()), t)
            assert ulps.numel() == 0 or ulps.max().item() <= DIVISION_FORM_DENOM_ULPS[t], (
                f"step {k}: denom[{i}] {ulps.max().item()} ulps from torch's division form")
            bound = division_form_param_bound(div_trace["update"][i], x, r, dtype)
            excess = (x.double() - r.double()).abs() - bound
            assert excess.numel() == 0 or excess.max().item() <= 0, (
                f"step {k}: param[{i}] off torch's division form by "
                f"{(x.double() - r.double()).abs().max().item():.3g}, bound "
                f"{bound[excess.argmax()].item():.3g} there")
    assert_stepped(case, before, kern)
