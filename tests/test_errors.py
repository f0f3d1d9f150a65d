"""Bad input -> a clear Python exception, and a failed step changes nothing.

Constructor errors are torch.optim's own (type and message). Op-level errors: every check runs
before any write (Note [All-or-nothing step] in csrc/ops/groups.h), so for every case the
params, grads, every state tensor and every step count are bitwise what they were before. The
bad tensor is always the LAST of several, so a kernel that validated and wrote tensor by tensor
would already have written the good ones.
"""

from __future__ import annotations

from collections.abc import Callable

import op_calls
import pytest
import torch
from helpers import any_changed, assert_bitwise_equal, snapshot
from strategies import AdamCase, op_args

import pyoptim

SPARSE_MSG = "Adam does not support sparse gradients, please consider SparseAdam instead"

# ---- constructor: the same exception type and message as torch.optim -----------------------

BAD_KWARGS = {
    "negative-lr": dict(lr=-1e-3),
    "lr-tensor-2-elements": dict(lr=torch.tensor([1e-3, 1e-3])),
    "lr-tensor-with-foreach": dict(lr=torch.tensor(1e-3), foreach=True),
    "negative-eps": dict(eps=-1.0),
    "beta1-is-1": dict(betas=(1.0, 0.999)),
    "beta1-negative": dict(betas=(-0.1, 0.999)),
    "beta2-negative": dict(betas=(0.9, -0.1)),
    "beta2-above-1-amsgrad": dict(betas=(0.9, 1.5), amsgrad=True),
    "betas-one-element": dict(betas=(0.9,)),
    "betas-float-and-tensor-foreach": dict(betas=(torch.tensor(0.9), 0.999), foreach=True),
    "betas-tensor-2-elements": dict(betas=(torch.tensor([0.9, 0.9]), 0.99)),
    "negative-weight-decay": dict(weight_decay=-0.1),
    "lr-string": dict(lr="0.1"),
    "fused-and-foreach": dict(fused=True, foreach=True),
    "fused-and-differentiable": dict(fused=True, differentiable=True),
}


def _error_of(fn: Callable[[], object]):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return type(e), str(e)
    return None


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("name", list(BAD_KWARGS))
def test_constructor_errors_match_torch(cls, name):
    kwargs = BAD_KWARGS[name]
    params = [torch.nn.Parameter(torch.randn(3))]
    expected = _error_of(lambda: getattr(torch.optim, cls)(params, **kwargs))
    assert expected is not None, "torch accepts these kwargs; the table row is wrong"
    assert _error_of(lambda: getattr(pyoptim, cls)(params, **kwargs)) == expected


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_empty_param_list_matches_torch(cls):
    expected = _error_of(lambda: getattr(torch.optim, cls)([]))
    assert expected is not None
    assert _error_of(lambda: getattr(pyoptim, cls)([])) == expected


# ---- class level: a hyper-parameter that is no number ----------------------------------------

# (class, kwargs, param group key, the bad value): torch validates the constructor's defaults,
# not the values of a param group given as a dict or added later (a config's "1e-3" read as a
# string, a None), which its step then refuses with TypeError
_NOT_A_NUMBER = [
    ("Adam", {}, "lr", "1e-3"), ("Adam", {}, "eps", None), ("AdamW", {}, "weight_decay", "0.01"),
    ("SGD", {"lr": 0.1, "momentum": 0.9}, "weight_decay", "0.1"), ("SGD", {"lr": 0.1}, "lr", "0.1"),
    ("Adamax", {}, "lr", None), ("Adagrad", {}, "lr_decay", "0"), ("SparseAdam", {}, "lr", "1e-3"),
    ("RowWiseAdagrad", {}, "eps", "1e-10"),
]


@pytest.mark.parametrize(("cls", "kwargs", "key", "value"), _NOT_A_NUMBER,
                         ids=[f"{c}-{k}-{v!r}" for c, _, k, v in _NOT_A_NUMBER])
def test_hyper_parameter_that_is_no_number_raises_type_error(cls, kwargs, key, value):
    """TypeError naming the group and the key, as torch's step raises TypeError, before
    anything is written (the ops' float list refused it with a RuntimeError that dumped the op's
    schema)."""
    def run(module):
        torch.manual_seed(0)
        good = torch.nn.Parameter(torch.randn(4, 3))
        bad = torch.nn.Parameter(torch.randn(4, 3))
        opt = getattr(module, cls)([{"params": [good]}, {"params": [bad], key: value}], **kwargs)
        for p in (good, bad):
            p.grad = torch.randn(4, 3).to_sparse() if cls == "SparseAdam" else torch.randn(4, 3)
        before = snapshot([good, bad])
        with pytest.raises(TypeError) as info:
            opt.step()
        return info.value, before, [good, bad], opt

    if hasattr(torch.optim, cls):
        run(torch.optim)
    error, before, params, opt = run(pyoptim)
    assert f"param_groups[1][{key!r}]" in str(error) and repr(value) in str(error), error
    assert_bitwise_equal(params, before, "params")
    assert not any(opt.state[p] for p in params if cls != "Adagrad")  # no state created


# ---- class level: sparse gradients ------------------------------------------------------------


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_sparse_grad_raises_and_changes_nothing(cls):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    opt = getattr(pyoptim, cls)(params, lr=1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    before_step = snapshot(params)
    opt.step()  # state exists now
    assert any_changed(before_step, params)
    params[-1].grad = torch.randn(4, 3).to_sparse()
    before = snapshot(dict(params=list(params), grads=[p.grad for p in params],
                           state=[dict(opt.state[p]) for p in params]))
    with pytest.raises(RuntimeError, match=SPARSE_MSG):
        opt.step()
    after = dict(params=list(params), grads=[p.grad for p in params],
                 state=[dict(opt.state[p]) for p in params])
    assert_bitwise_equal(after["params"], before["params"], "params")
    assert_bitwise_equal(after["state"], before["state"], "state")
    for g0, g1 in zip(before["grads"][:-1], after["grads"][:-1]):
        assert_bitwise_equal(g0, g1, "grads")
    assert torch.equal(before["grads"][-1].to_dense(), after["grads"][-1].to_dense())
    # torch raises the same error for the same input
    ref = getattr(torch.optim, cls)([torch.nn.Parameter(torch.randn(2))])
    ref.param_groups[0]["params"][0].grad = torch.randn(2).to_sparse()
    with pytest.raises(RuntimeError, match=SPARSE_MSG):
        ref.step()


# ---- op level: validation before mutation -----------------------------------------------------

HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8, amsgrad=True,
          maximize=False, decoupled=False)


def _sample():
    case = AdamCase(sizes=[17, 5, 33], dtype=torch.float32, hp=HP, seed=2, step0=4,
                    skips=(False,))
    state = case.state()
    return state, case.grads(0)


def _append(state, grads, p, g=None, same=None):
    """Append a 4th param (with fresh state like it, or `same`'s overrides) to the lists."""
    g = torch.zeros_like(p) if g is None else g
    state["params"].append(p)
    grads.append(g)
    for key in ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        state[key].append(torch.zeros(p.shape, dtype=p.dtype) if p.layout == torch.strided
                          else torch.zeros(p.shape))
    state["state_steps"].append(torch.tensor(4.0))


def bad_grad_shape(state, grads):
    _append(state, grads, torch.randn(6), torch.randn(7))


def bad_grad_dtype(state, grads):
    _append(state, grads, torch.randn(6), torch.randn(6, dtype=torch.float64))


def bad_grad_device(state, grads):
    _append(state, grads, torch.randn(6), torch.randn(6, device="meta"))


def bad_grad_sparse(state, grads):
    _append(state, grads, torch.randn(6), torch.randn(6).to_sparse())


def bad_state_dtype(state, grads):
    _append(state, grads, torch.randn(6))
    state["exp_avg_sqs"][-1] = torch.zeros(6, dtype=torch.float16)


def bad_state_shape(state, grads):
    _append(state, grads, torch.randn(6))
    state["exp_avgs"][-1] = torch.zeros(2, 3)


def short_grads(state, grads):
    _append(state, grads, torch.randn(6))
    grads.pop()


def short_steps(state, grads):
    _append(state, grads, torch.randn(6))
    state["state_steps"].pop()


def missing_max_exp_avg_sqs(state, grads):
    _append(state, grads, torch.randn(6))
    state["max_exp_avg_sqs"].clear()


def step_two_elements(state, grads):
    _append(state, grads, torch.randn(6))
    state["state_steps"][-1] = torch.tensor([4.0, 4.0])


def aliased_same_tensor(state, grads):
    p = state["params"][0]
    _append(state, grads, p)


def aliased_overlapping_views(state, grads):
    base = torch.randn(40)
    state["params"][0] = base[:20]
    for key in ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        state[key][0] = torch.zeros(20)
    grads[0] = torch.randn(20)
    _append(state, grads, base[10:30])


def state_aliases_param(state, grads):
    p = torch.randn(6)
    _append(state, grads, p)
    state["exp_avgs"][-1] = p


def expanded_param(state, grads):
    _append(state, grads, torch.randn(1).expand(6))
    for key in ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"):
        state[key][-1] = torch.zeros(6)


def int_param(state, grads):
    _append(state, grads, torch.arange(6), torch.arange(6))


def complex_param(state, grads):
    _append(state, grads, torch.randn(6, dtype=torch.complex64),
            torch.randn(6, dtype=torch.complex64))


OP_ERRORS = {
    # name: (mutation, hyper-parameter overrides, exception type, message fragment)
    "grad-shape": (bad_grad_shape, {}, ValueError, "grads\\[3\\] has shape"),
    "grad-dtype": (bad_grad_dtype, {}, TypeError, "grads\\[3\\] has dtype"),
    # a meta grad among CPU tensors: the dispatcher picks the Meta kernel, whose device check
    # refuses the CPU params (a CUDA grad with CPU params reaches the CUDA kernel's)
    "grad-device": (bad_grad_device, {}, RuntimeError,
                    "expected all tensors to be on the same device"),
    "grad-sparse": (bad_grad_sparse, {}, RuntimeError, SPARSE_MSG),
    "state-dtype": (bad_state_dtype, {}, TypeError, "exp_avg_sqs\\[3\\] has dtype"),
    "state-shape": (bad_state_shape, {}, ValueError, "exp_avgs\\[3\\] has shape"),
    "list-length-grads": (short_grads, {}, ValueError, "expected 4 grads"),
    "list-length-steps": (short_steps, {}, ValueError, "expected 4 state_steps"),
    "list-length-max_exp_avg_sqs": (missing_max_exp_avg_sqs, {}, ValueError,
                                    "expected 4 max_exp_avg_sqs"),
    "step-not-one-element": (step_two_elements, {}, ValueError, "state_steps\\[3\\]"),
    "aliased-same-tensor": (aliased_same_tensor, {}, ValueError, "overlap in memory"),
    "aliased-overlapping-views": (aliased_overlapping_views, {}, ValueError, "overlap in memory"),
    "state-aliases-param": (state_aliases_param, {}, ValueError, "overlap in memory"),
    "expanded-param": (expanded_param, {}, ValueError, "share memory"),
    "int-param": (int_param, {}, TypeError, "params\\[3\\] has dtype"),
    "complex-param": (complex_param, {}, TypeError, "params\\[3\\] has dtype"),
    "negative-lr": (lambda s, g: None, dict(lr=-1.0), ValueError, "Invalid learning rate"),
    "negative-lr-tensor": (lambda s, g: None, dict(lr_tensor=torch.tensor(-1.0)), ValueError,
                           "Invalid learning rate"),
    "beta1-is-1": (lambda s, g: None, dict(beta1=1.0), ValueError, "beta parameter at index 0"),
    "beta2-negative": (lambda s, g: None, dict(beta2=-0.5), ValueError,
                       "beta parameter at index 1"),
    "negative-eps": (lambda s, g: None, dict(eps=-1.0), ValueError, "Invalid epsilon"),
    "negative-weight-decay": (lambda s, g: None, dict(weight_decay=-1.0), ValueError,
                              "Invalid weight_decay"),
    "grad-scale-2-elements": (lambda s, g: None, dict(grad_scale=torch.ones(2)), ValueError,
                              "grad_scale must be a one-element tensor"),
    "found-inf-2-elements": (lambda s, g: None, dict(found_inf=torch.zeros(2)), ValueError,
                             "found_inf must be a one-element tensor"),
}


@pytest.mark.parametrize("name", list(OP_ERRORS))
def test_op_error_changes_nothing(isa, name):
    mutate, overrides, exc, match = OP_ERRORS[name]
    state, grads = _sample()
    mutate(state, grads)
    before = snapshot(dict(state=state, grads=grads))
    with pytest.raises(exc, match=match):
        op_calls.adam_(*op_args(state, grads), **dict(HP, **overrides))
    assert_bitwise_equal(dict(state=state, grads=grads), before, name)
    # the same lists without the defect do step (the check is what stopped it)
    good_state, good_grads = _sample()
    good_before = snapshot(good_state)
    op_calls.adam_(*op_args(good_state, good_grads), **HP)
    assert any_changed(good_before["params"], good_state["params"])


# 2**63 - 1 twice and 3 add up to 1 modulo 2**64: the sum wrapped around to the one param
WRAPPING_GROUP_SIZES = [2**63 - 1, 2**63 - 1, 3]


def _wrapping_call(op: str) -> Callable[[], object]:
    ops = torch.ops.pyoptim
    p, g, s = torch.randn(5, 2), torch.randn(5, 2), torch.tensor(0.0)
    sizes, n = WRAPPING_GROUP_SIZES, len(WRAPPING_GROUP_SIZES)
    calls = {
        "adam_": lambda: ops.adam_([p], [g], [torch.zeros(5, 2)], [torch.zeros(5, 2)], [], [s],
                                   sizes, [0.1, 0.9, 0.999, 0.0, 1e-8] * n, [False] * 8 * n, []),
        "sgd_": lambda: ops.sgd_([p], [g], [], sizes, [0.1, 0.0, 0.0, 0.0] * n, [False] * 7 * n,
                                 [], []),
        "adamax_": lambda: ops.adamax_([p], [g], [torch.zeros(5, 2), torch.zeros(5, 2)], [s],
                                       sizes, [0.1, 0.9, 0.999, 1e-8, 0.0] * n, [False] * n, []),
        "sparse_adam_": lambda: ops.sparse_adam_([p], [g.to_sparse(1)], [torch.zeros(5, 2)],
                                                 [torch.zeros(5, 2)], [0.0], sizes,
                                                 [0.1, 0.9, 0.999, 1e-8, 0.0] * n, [False] * n,
                                                 []),
        "rowwise_adagrad_": lambda: ops.rowwise_adagrad_([p], [g], [torch.zeros(5)], [s], sizes,
                                                         [0.1, 0.0, 0.0, 1e-10] * n,
                                                         [False] * 2 * n, []),
    }
    return calls[op]


@pytest.mark.parametrize("op", ["adam_", "sgd_", "adamax_", "sparse_adam_", "rowwise_adagrad_"])
def test_op_group_sizes_that_wrap_around_are_rejected(op):
    """group_sizes whose sum wraps around to the number of params (passed to the op directly)
    raise a ValueError naming group_sizes; they passed the sum check and failed allocating a
    group per element of 2**63 - 1 (ValueError: vector::_M_fill_insert)."""
    with pytest.raises(ValueError, match="group_sizes add up to more than the 1 params"):
        _wrapping_call(op)()


def test_dense_op_state_mismatch_names_its_param():
    """adamax_'s states list holds every param's exp_avg, then every exp_inf: states[3] is
    params[1]'s exp_inf, and the error names params[1] (it named params[3], of two params)."""
    ps = [torch.randn(4), torch.randn(3, 2)]
    states = [torch.zeros(4), torch.zeros(3, 2), torch.zeros(4), torch.zeros(6)]
    with pytest.raises(ValueError, match=r"states\[3\] has shape \[6\] but params\[1\] has "
                                         r"shape \[3, 2\]"):
        torch.ops.pyoptim.adamax_(ps, [torch.randn(4), torch.randn(3, 2)], states,
                                  [torch.tensor(0.0), torch.tensor(0.0)], [2],
                                  [0.1, 0.9, 0.999, 1e-8, 0.0], [False], [])
