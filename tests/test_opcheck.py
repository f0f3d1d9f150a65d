"""torch.library.opcheck on every pyoptim optimizer op, over samples of several param groups.

opcheck's default test_utils all apply (schema / mutation annotations, autograd registration,
fake tensors through the Meta kernels of csrc/ops/meta.cpp, AOT dispatch with static and
dynamic shapes), so none is deselected for dense samples. With sparse COO grads, opcheck's
schema and AOT checks cannot run (they read every input's storage, which a sparse tensor has
not: "Cannot access storage of SparseTensorImpl"); those samples run the other two, and the
mutation claims of the schema are checked directly: the sparse grads come out bitwise unchanged.
Each sample also runs for real, and must move the params: a sample that exercised nothing would
make the check vacuous.
"""

from __future__ import annotations

import pytest
import torch
from conftest import dtype_id
from helpers import any_changed, assert_bitwise_equal, snapshot
from strategies import AdamCase, op_args
from torch.library import opcheck

TEST_UTILS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

ADAM_GROUPS = {
    # two groups each: (amsgrad, maximize, decoupled, weight_decay)
    "adam-and-amsgrad": ((False, False, False, 0.0), (True, False, False, 0.1)),
    "adamw-maximize-and-amsgrad": ((False, True, True, 0.01), (True, True, True, 0.01)),
}
EXTRAS = {
    "plain": lambda: {},
    "grad_scale": lambda: dict(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0)),
    "lr_tensors": lambda: dict(lr_tensors=[torch.tensor(3e-3), None]),
    "validate_only": lambda: dict(validate_only=True),
}


SPARSE_TEST_UTILS = ("test_autograd_registration", "test_faketensor")


def _check(op, args, kwargs, sparse: bool = False) -> None:
    utils = SPARSE_TEST_UTILS if sparse else TEST_UTILS
    result = opcheck(op, args, kwargs, test_utils=utils)
    assert result == {name: "SUCCESS" for name in utils}


def adam_sample(groups: str, dtype: torch.dtype):
    """Two groups (sizes 2 and 2) of tensors of 5, 33, 0, 7 elements after 3 steps."""
    states = []
    for k, (amsgrad, *_rest) in enumerate(ADAM_GROUPS[groups]):
        hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=amsgrad,
                  maximize=False, decoupled=False)
        case = AdamCase(sizes=[5, 33] if k == 0 else [0, 7], dtype=dtype, hp=hp, seed=5 + k,
                        step0=3, skips=(False,))
        states.append(case.state())
        states[-1]["grads"] = case.grads(0)
    state = {key: states[0][key] + states[1][key] for key in states[0]}
    args = op_args(state, state["grads"])
    cfg = ADAM_GROUPS[groups]
    # per group: hyper (lr, beta1, beta2, weight_decay, eps), flags (amsgrad, maximize,
    # decoupled, master_weights, stochastic_rounding, bf16_states, q8_states)
    off = [False] * 5
    kwargs = dict(group_sizes=[2, 2],
                  hyper=[1e-2, 0.9, 0.999, cfg[0][3], 1e-8, 2e-2, 0.8, 0.99, cfg[1][3], 1e-6],
                  flags=[*cfg[0][:3], *off, *cfg[1][:3], *off], lr_tensors=[])
    return state, args, kwargs


@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("groups", list(ADAM_GROUPS))
def test_opcheck_adam(groups, dtype, extra):
    state, args, kwargs = adam_sample(groups, dtype)
    kwargs.update(EXTRAS[extra]())
    _check(torch.ops.pyoptim.adam_.default, args, kwargs)
    before = snapshot(state)
    torch.ops.pyoptim.adam_.default(*args, **kwargs)
    if kwargs.get("validate_only"):
        assert not any_changed(before["params"], state["params"])
    else:
        assert any_changed(before["params"], state["params"])
        assert state["state_steps"][0].item() == before["state_steps"][0].item() + 1


def adam_mixed_sample(master_dtype: torch.dtype):
    """Three groups: master weights (params of `master_dtype`, float32 master and moments),
    stochastic rounding (bfloat16), and plain bfloat16 with amsgrad (Note [Master weights and
    stochastic rounding])."""
    g = torch.Generator().manual_seed(13)

    def rnd(n, dtype, scale=1.0):
        return (torch.randn(n, generator=g) * scale).to(dtype)

    bf = torch.bfloat16
    params = [rnd(5, master_dtype), rnd(33, master_dtype), rnd(0, bf), rnd(19, bf), rnd(7, bf)]
    grads = [rnd(p.numel(), p.dtype) for p in params]
    state_dtypes = [torch.float32, torch.float32, bf, bf, bf]
    exp_avgs = [rnd(p.numel(), d, 0.1) for p, d in zip(params, state_dtypes)]
    exp_avg_sqs = [rnd(p.numel(), d, 0.1).abs() for p, d in zip(params, state_dtypes)]
    max_sqs = [exp_avg_sqs[4].clone()]
    steps = [torch.tensor(3.0) for _ in params]
    masters = [p.float() for p in params[:2]]
    seeds = [torch.tensor(5), torch.tensor(-7)]
    args = (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps)
    # per group: hyper (lr, beta1, beta2, weight_decay, eps), flags (amsgrad, maximize,
    # decoupled, master_weights, stochastic_rounding, bf16_states, q8_states, kahan)
    kwargs = dict(group_sizes=[2, 2, 1], hyper=[1e-2, 0.9, 0.999, 0.01, 1e-8] * 3,
                  flags=[False, False, True, True, False, False, False, False,
                         False, False, True, False, True, False, False, False,
                         True, False, False, False, False, False, False, False],
                  lr_tensors=[], master_params=masters, sr_seeds=seeds)
    return params + masters, args, kwargs


@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("master_dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_opcheck_adam_mixed(master_dtype, extra):
    written, args, kwargs = adam_mixed_sample(master_dtype)
    kwargs.update(EXTRAS[extra]())
    if extra == "lr_tensors":
        kwargs["lr_tensors"] = [torch.tensor(3e-3), None, torch.tensor(1e-3)]
    _check(torch.ops.pyoptim.adam_.default, args, kwargs)
    before = snapshot(written)
    torch.ops.pyoptim.adam_.default(*args, **kwargs)
    assert any_changed(before, written) != bool(kwargs.get("validate_only"))


def adam_states_sample():
    """Three groups of float32 params: bfloat16 states, 8-bit states (one param over a block
    boundary, one empty), torch's float32 states (Note [Reduced-precision optimizer states])."""
    g = torch.Generator().manual_seed(17)

    def rnd(n, scale=1.0):
        return torch.randn(n, generator=g) * scale

    sizes = [5, 33, 300, 0, 7]
    params = [rnd(n) for n in sizes]
    grads = [rnd(n) for n in sizes]
    m = [torch.ops.pyoptim.quantize_8bit(rnd(n, 0.1), False) for n in sizes[2:4]]
    v = [torch.ops.pyoptim.quantize_8bit(rnd(n, 0.1).abs(), True) for n in sizes[2:4]]
    exp_avgs = [rnd(5, 0.1).bfloat16(), rnd(33, 0.1).bfloat16(), m[0][0], m[1][0], rnd(7, 0.1)]
    exp_avg_sqs = [rnd(5, 0.1).abs().bfloat16(), rnd(33, 0.1).abs().bfloat16(), v[0][0],
                   v[1][0], rnd(7, 0.1).abs()]
    steps = [torch.tensor(3.0) for _ in params]
    seeds = [torch.tensor(k) for k in (5, -7, 11, 13)]
    m_scales, v_scales = [m[0][1], m[1][1]], [v[0][1], v[1][1]]
    args = (params, grads, exp_avgs, exp_avg_sqs, [], steps)
    # per group: hyper (lr, beta1, beta2, weight_decay, eps), flags (amsgrad, maximize,
    # decoupled, master_weights, stochastic_rounding, bf16_states, q8_states, kahan)
    kwargs = dict(group_sizes=[2, 2, 1], hyper=[1e-2, 0.9, 0.999, 0.01, 1e-8] * 3,
                  flags=[False, False, True, False, False, True, False, False,
                         False, True, False, False, False, False, True, False,
                         False, False, True, False, False, False, False, False],
                  lr_tensors=[], sr_seeds=seeds, exp_avg_scales=m_scales,
                  exp_avg_sq_scales=v_scales)
    return params + exp_avgs + m_scales, args, kwargs


@pytest.mark.parametrize("extra", list(EXTRAS))
def test_opcheck_adam_states(extra):
    written, args, kwargs = adam_states_sample()
    kwargs.update(EXTRAS[extra]())
    if extra == "lr_tensors":
        kwargs["lr_tensors"] = [torch.tensor(3e-3), None, torch.tensor(1e-3)]
    _check(torch.ops.pyoptim.adam_.default, args, kwargs)
    before = snapshot(written)
    torch.ops.pyoptim.adam_.default(*args, **kwargs)
    assert any_changed(before, written) != bool(kwargs.get("validate_only"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_opcheck_adam_kahan(dtype):
    """Group 0: kahan (16-bit params with their compensations); group 1: plain, amsgrad."""
    g = torch.Generator().manual_seed(23)
    params = [torch.randn(n, generator=g).to(dtype) for n in (5, 33, 7)]
    grads = [torch.randn_like(p) for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    comps = [torch.zeros_like(p) for p in params[:2]]
    args = (params, grads, exp_avgs, exp_avg_sqs, [torch.zeros_like(params[2])],
            [torch.tensor(0.0) for _ in params])
    kwargs = dict(group_sizes=[2, 1], hyper=[1e-2, 0.9, 0.999, 0.01, 1e-8] * 2,
                  flags=[False, False, True, False, False, False, False, True,
                         True, False, False, False, False, False, False, False],
                  lr_tensors=[], kahan_comps=comps)
    _check(torch.ops.pyoptim.adam_.default, args, kwargs)
    before = snapshot(params + comps)
    torch.ops.pyoptim.adam_.default(*args, **kwargs)
    assert any_changed(before[:3], params) and any_changed(before[3:], comps)


@pytest.mark.parametrize("sqrt_map", [False, True])
def test_opcheck_conversions(sqrt_map):
    x = torch.rand(300) * 0.1
    _check(torch.ops.pyoptim.quantize_8bit.default, (x, sqrt_map), {})
    codes, scales = torch.ops.pyoptim.quantize_8bit(x, sqrt_map)
    _check(torch.ops.pyoptim.dequantize_8bit.default, (codes, scales, sqrt_map), {})


def _sparse(rows: int, width: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, rows, (1, 9), generator=g)
    return torch.sparse_coo_tensor(idx, torch.randn(9, width, generator=g).to(dtype),
                                   (rows, width))


def sgd_sample(dtype: torch.dtype, sparse: bool):
    """Group 0: plain SGD; group 1: momentum with one buffer on its first step."""
    g = torch.Generator().manual_seed(11)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    params = [rnd(6, 3), rnd(5), rnd(6, 3), rnd(4, 2)]
    grads = [_sparse(6, 3, dtype, 1) if sparse else rnd(6, 3), rnd(5),
             _sparse(6, 3, dtype, 2) if sparse else rnd(6, 3), rnd(4, 2)]
    bufs = [rnd(6, 3), torch.zeros(4, 2, dtype=dtype)]
    # per group: hyper (lr, momentum, dampening, weight_decay), flags (nesterov, maximize,
    # master_weights, stochastic_rounding, bf16_states, q8_states, kahan)
    kwargs = dict(group_sizes=[2, 2], hyper=[0.1, 0.0, 0.0, 0.0, 0.05, 0.9, 0.1, 0.01],
                  flags=[False, False, False, False, False, False, False,
                         False, True, False, False, False, False, False], first_step=[False, True],
                  lr_tensors=[])
    return params, bufs, (params, grads, bufs), kwargs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_opcheck_sgd_master(dtype):
    """Group 0: master weights (float32 masters and buffers, one buffer on its first step);
    group 1: plain momentum in the param dtype."""
    g = torch.Generator().manual_seed(17)
    params = [torch.randn(6, 3, generator=g).to(dtype) for _ in range(3)]
    grads = [torch.randn(6, 3, generator=g).to(dtype) for _ in range(3)]
    bufs = [torch.randn(6, 3, generator=g), torch.zeros(6, 3), torch.zeros(6, 3).to(dtype)]
    masters = [p.float() for p in params[:2]]
    kwargs = dict(group_sizes=[2, 1], hyper=[0.1, 0.9, 0.0, 0.01, 0.05, 0.9, 0.1, 0.0],
                  flags=[True, False, True, False, False, False, False,
                         False, False, False, False, False, False, False],
                  first_step=[False, True, False], lr_tensors=[], master_params=masters)
    args = (params, grads, bufs)
    _check(torch.ops.pyoptim.sgd_.default, args, kwargs)
    before = snapshot(params + masters + bufs)
    torch.ops.pyoptim.sgd_.default(*args, **kwargs)
    assert any_changed(before, params + masters + bufs)


def test_opcheck_sgd_modes():
    """Group 0: bfloat16 params stochastically rounded; group 1: float32 params with bfloat16
    buffers (one on its first step); group 2: 8-bit buffers over a block boundary (the seeds
    are written: the step counts in them)."""
    g = torch.Generator().manual_seed(19)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    bf = torch.bfloat16
    params = [rnd(6, 3, dtype=bf), rnd(5, dtype=bf), rnd(7), rnd(9), rnd(300)]
    grads = [torch.randn_like(p) for p in params]
    codes, scales = torch.ops.pyoptim.quantize_8bit(rnd(300) * 0.1, False)
    bufs = [rnd(6, 3, dtype=bf), rnd(5, dtype=bf), rnd(7, dtype=bf), torch.zeros(9, dtype=bf),
            codes]
    seeds = [torch.tensor(k) for k in (3, 5, 7, 11, 13)]
    kwargs = dict(group_sizes=[2, 2, 1], hyper=[0.1, 0.9, 0.0, 0.01] * 3,
                  flags=[False, False, False, True, False, False, False,
                         True, False, False, False, True, False, False,
                         False, True, False, False, False, True, False],
                  first_step=[False, False, False, True, False], lr_tensors=[],
                  sr_seeds=seeds, buffer_scales=[scales])
    args = (params, grads, bufs)
    _check(torch.ops.pyoptim.sgd_.default, args, kwargs)
    before = snapshot(params + bufs + seeds + [scales])
    torch.ops.pyoptim.sgd_.default(*args, **kwargs)
    assert any_changed(before[:5], params) and any_changed(before[5:10], bufs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_opcheck_sgd_kahan(dtype):
    """Group 0: kahan with momentum (one buffer on its first step); group 1: kahan without
    momentum (no buffer); group 2: plain momentum."""
    g = torch.Generator().manual_seed(29)
    params = [torch.randn(n, generator=g).to(dtype) for n in (5, 33, 7, 9)]
    grads = [torch.randn_like(p) for p in params]
    bufs = [torch.randn_like(params[0]), torch.zeros_like(params[1]), torch.zeros_like(params[3])]
    comps = [torch.randn_like(p) * 1e-3 for p in params[:3]]
    kwargs = dict(group_sizes=[2, 1, 1], hyper=[0.1, 0.9, 0.0, 0.01, 0.1, 0.0, 0.0, 0.0,
                                                0.05, 0.9, 0.1, 0.0],
                  flags=[True, False, False, False, False, False, True,
                         False, True, False, False, False, False, True,
                         False, False, False, False, False, False, False],
                  first_step=[False, True, False], lr_tensors=[], kahan_comps=comps)
    args = (params, grads, bufs)
    _check(torch.ops.pyoptim.sgd_.default, args, kwargs)
    before = snapshot(params + comps)
    torch.ops.pyoptim.sgd_.default(*args, **kwargs)
    assert any_changed(before[:4], params) and any_changed(before[4:], comps)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "dense-and-sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_opcheck_sgd(dtype, sparse):
    params, bufs, args, kwargs = sgd_sample(dtype, sparse)
    _check(torch.ops.pyoptim.sgd_.default, args, kwargs, sparse=sparse)
    before = snapshot(params + bufs)
    grads_before = snapshot(args[1])
    torch.ops.pyoptim.sgd_.default(*args, **kwargs)
    assert any_changed(before[:4], params) and any_changed(before[4:], bufs)
    assert_bitwise_equal(args[1], grads_before, "grads (read only)")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_opcheck_sparse_adam(dtype):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(6, 3, generator=gen).to(dtype) for _ in range(3)]
    grads = [_sparse(6, 3, dtype, 10 + k) for k in range(3)]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    args = (params, grads, m, v, [0.0, 3.0, 1.0])
    # per group: hyper (lr, beta1, beta2, eps, weight_decay), flags (maximize)
    kwargs = dict(group_sizes=[1, 2],
                  hyper=[0.1, 0.9, 0.999, 1e-8, 0.0, 0.01, 0.8, 0.99, 1e-6, 0.1],
                  flags=[False, True], lr_tensors=[])
    _check(torch.ops.pyoptim.sparse_adam_.default, args, kwargs, sparse=True)
    before = snapshot(params)
    grads_before = snapshot(grads)
    torch.ops.pyoptim.sparse_adam_.default(*args, **kwargs)
    assert any_changed(before, params)
    assert_bitwise_equal(grads, grads_before, "grads (read only)")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_opcheck_sparse_adagrad(dtype):
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(6, 3, generator=gen).to(dtype) for _ in range(3)]
    grads = [_sparse(6, 3, dtype, 20 + k) for k in range(3)]
    sums = [torch.full_like(p, 0.1) for p in params]
    steps = [torch.tensor(float(k)) for k in range(3)]
    args = (params, grads, sums, steps)
    # per group: hyper (lr, lr_decay, weight_decay, eps), flags (maximize)
    kwargs = dict(group_sizes=[1, 2], hyper=[0.1, 0.0, 0.0, 1e-10, 0.05, 0.1, 0.0, 1e-3],
                  flags=[False, True], lr_tensors=[])
    _check(torch.ops.pyoptim.sparse_adagrad_.default, args, kwargs, sparse=True)
    before = snapshot(params)
    grads_before = snapshot(grads)
    torch.ops.pyoptim.sparse_adagrad_.default(*args, **kwargs)
    assert any_changed(before, params)
    assert_bitwise_equal(grads, grads_before, "grads (read only)")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "dense-and-sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_opcheck_rowwise_adagrad(dtype, sparse):
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(6, 3, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype),
              torch.randn(4, 40, generator=gen).to(dtype)]
    grads = [_sparse(6, 3, dtype, 30) if sparse else torch.randn(6, 3, generator=gen).to(dtype),
             torch.randn(5, generator=gen).to(dtype), torch.randn(4, 40, generator=gen).to(dtype)]
    sum_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    sums = [torch.full((p.shape[0],), 0.1, dtype=sum_dtype) for p in params]
    steps = [torch.tensor(float(k)) for k in range(3)]
    args = (params, grads, sums, steps)
    # per group: hyper (lr, lr_decay, weight_decay, eps), flags (maximize, decoupled)
    kwargs = dict(group_sizes=[2, 1], hyper=[0.1, 0.0, 0.01, 1e-10, 0.05, 0.1, 0.01, 1e-3],
                  flags=[False, False, True, True], lr_tensors=[])
    _check(torch.ops.pyoptim.rowwise_adagrad_.default, args, kwargs, sparse=sparse)
    before = snapshot(params + sums)
    grads_before = snapshot(grads)
    torch.ops.pyoptim.rowwise_adagrad_.default(*args, **kwargs)
    assert any_changed(before[:3], params) and any_changed(before[3:], sums)
    assert_bitwise_equal(grads, grads_before, "grads (read only)")


# Every optimizer op and where its opcheck runs; the test below fails when an op is added
# without one. The others are hooks with no tensor arguments (and the bench's probes).
OPCHECKED = {
    "pyoptim::adam_": "test_opcheck_adam (and _mixed, _states, _kahan)",
    "pyoptim::sgd_": "test_opcheck_sgd (and _master, _modes, _kahan)",
    "pyoptim::sparse_adam_": "test_opcheck_sparse_adam",
    "pyoptim::sparse_adagrad_": "test_opcheck_sparse_adagrad",
    "pyoptim::rowwise_adagrad_": "test_opcheck_rowwise_adagrad",
    "pyoptim::adamax_": "tests/test_adamax.py::test_opcheck",
    "pyoptim::adagrad_": "tests/test_adagrad.py::test_opcheck",
    "pyoptim::quantize_8bit": "test_opcheck_conversions",
    "pyoptim::dequantize_8bit": "test_opcheck_conversions",
}
NOT_OPTIMIZERS = {
    "pyoptim::_built_with_cuda", "pyoptim::_kernel_table_isa", "pyoptim::_set_cpu_capability",
    "pyoptim::_stream_probe_", "pyoptim::_row_probe_", "pyoptim::cpu_capability",
    "pyoptim::max_cpu_capability", "pyoptim::cpu_levels",
}


def test_every_op_is_opchecked():
    ops = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pyoptim::")}
    assert ops == OPCHECKED.keys() | NOT_OPTIMIZERS
