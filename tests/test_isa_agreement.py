"""Every CPU level and every thread count computes the same bits.

See Note [Bitwise agreement across paths] in csrc/include/pyoptim/math/adam.h. The baseline is
the scalar level on one thread; every (level, threads) pair must reproduce it exactly, for every
dtype, including lists of many small tensors whose thread split points fall inside tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import op_calls
import pytest
import torch
from conftest import ISA_LEVELS, dtype_id
from helpers import any_changed, assert_bitwise_equal
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import DTYPES, AdamCase, adam_cases, adam_hparams, clone_state, op_args, seeds

import pyoptim
from pyoptim import _ops

THREADS = (1, 2, 3)


def run(case: AdamCase, state0: dict, level: str, threads: int) -> dict:
    state = clone_state(state0)
    torch.set_num_threads(threads)
    with _ops.cpu_capability_override(level):
        for k in range(case.steps):
            op_calls.adam_(*op_args(state, case.grads(k)), **case.hp, **case.extras(k))
    return state


def assert_all_agree(case: AdamCase, restore) -> None:
    state0 = case.state()
    base = run(case, state0, "scalar", 1)
    assert any_changed(state0["exp_avgs"], base["exp_avgs"])  # the step did something
    for level in ISA_LEVELS:
        for threads in THREADS:
            if (level, threads) == ("scalar", 1):
                continue
            got = run(case, state0, level, threads)
            assert_bitwise_equal(got, base, f"{level} x {threads} threads")


@given(case=adam_cases())
def test_levels_and_threads_agree(restore_num_threads, case):
    assert_all_agree(case, restore_num_threads)


@st.composite
def many_small(draw, dtype):
    # ~300 tensors of 1..700 elements: several times the 64 KiB grain, so 2-3 threads split the
    # byte range at points inside tensors, and never at a multiple of the vector width only
    n = draw(st.integers(min_value=150, max_value=300))
    sizes = [draw(st.integers(min_value=1, max_value=700)) for _ in range(n)]
    return AdamCase(sizes=sizes, dtype=dtype, hp=draw(adam_hparams()), seed=draw(seeds), step0=1,
                    skips=(False, False))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
# each example is ~300 tensors x 9 runs
@settings(max_examples=max(1, settings().max_examples // 4))
@given(data=st.data())
def test_many_small_tensors_agree(restore_num_threads, dtype, data):
    case = data.draw(many_small(dtype))
    assert_all_agree(case, restore_num_threads)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_large_tensor_split_agrees(restore_num_threads, dtype):
    """One tensor far above the grain, with a tail: the split falls inside it."""
    case = AdamCase(sizes=[300_007], dtype=dtype, seed=3, step0=0, skips=(False,),
                    hp=dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8,
                            amsgrad=True, maximize=False, decoupled=True))
    assert_all_agree(case, restore_num_threads)


_CHILD = textwrap.dedent(
    """
    import sys, torch, pyoptim
    sys.path.insert(0, {tests!r})
    from test_isa_agreement import env_case_results
    torch.save(dict(level=pyoptim.cpu_capability(), states=env_case_results()), {out!r})
    """
)


def env_case_results() -> list:
    """A fixed case per dtype, stepped twice at the current level (run in the child too)."""
    states = []
    for dtype in DTYPES:
        case = AdamCase(sizes=[1, 17, 4099], dtype=dtype, seed=11, step0=0, skips=(False, False),
                        hp=dict(lr=1e-2, beta1=0.3, beta2=0.99, weight_decay=0.1, eps=1e-6,
                                amsgrad=True, maximize=True, decoupled=False))
        state = case.state()
        for k in range(case.steps):
            op_calls.adam_(*op_args(state, case.grads(k)), **case.hp)
        states.append(state)
    return states


@pytest.mark.parametrize("cap", [lvl for lvl in ("scalar", "avx2") if lvl in ISA_LEVELS])
def test_env_variable_caps_level(tmp_path, cap):
    """PYOPTIM_CPU_CAPABILITY=<level> caps the level chosen at load time; same bits as this
    process (at its own, uncapped level) for every dtype."""
    out = tmp_path / "out.pt"
    env = dict(os.environ, PYOPTIM_CPU_CAPABILITY=cap)
    code = _CHILD.format(tests=os.path.dirname(__file__), out=str(out))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    child = torch.load(out)
    assert child["level"] == cap
    with _ops.cpu_capability_override(_ops.max_cpu_capability()):
        here = env_case_results()
    assert_bitwise_equal(child["states"], here)
    assert all(s["state_steps"][0].item() == 2.0 for s in here)


_NONFINITE_MODES = {
    "adamw": (pyoptim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    "adam-amsgrad": (pyoptim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "adamw-kahan": (pyoptim.AdamW, dict(lr=1e-2, kahan_summation=True)),
    "sgd-kahan": (pyoptim.SGD, dict(lr=1e-1, momentum=0.9, kahan_summation=True)),
}


@pytest.mark.parametrize("mode", sorted(_NONFINITE_MODES))
def test_bf16_nonfinite_agree(restore_num_threads, mode):
    """bfloat16 steps whose new values are NaN, infinite or round past the largest finite value,
    at even and odd positions of a register and in both halves of a vector pair (the AVX2 store
    rounds a register of 16 without the NaN select and takes the exact rounding when it holds a
    NaN): every level stores the scalar level's bits, NaN as 0x7FC0."""
    n = 259
    gen = torch.Generator().manual_seed(7)
    param = torch.randn(n, generator=gen).to(torch.bfloat16)
    grad = torch.randn(n, generator=gen).to(torch.bfloat16)
    param[[3, 20, 33, 34, 130, 257]] = float("nan")
    param[[40, 71]] = float("inf")
    param[[41, 72]] = -float("inf")
    param[[90, 91, 141]] = torch.finfo(torch.bfloat16).max  # decay or steps can round them up
    grad[[100, 117, 118, 200]] = float("nan")
    grad[[150, 167]] = float("inf")
    cls, kw = _NONFINITE_MODES[mode]

    def run(level):
        torch.set_num_threads(1)
        p = param.clone().requires_grad_()
        opt = cls([p], **kw)
        with _ops.cpu_capability_override(level):
            for k in range(3):
                p.grad = grad if k != 1 else grad.flip(0)
                opt.step()
        return [p.detach(), opt.state_dict()["state"]]

    base = run("scalar")
    assert base[0].isnan().sum() >= 10
    for level in ISA_LEVELS:
        assert_bitwise_equal(run(level), base, level)
