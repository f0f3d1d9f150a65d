"""A step that raises changes nothing, across param groups too (Note [All-or-nothing step] in
csrc/ops/groups.h): one op call covers every param group of a device, and a step over several
devices first makes every call with validate_only=True. The bad input is always in the LAST
group, after a good one that a group-by-group implementation would already have updated. State
that the failed step created lazily (torch.optim's initial state) is removed again, and state it
converted for a mixed-precision mode is put back.

Also validate_only itself, per op: valid arguments write nothing (params, state, step counts),
invalid ones raise the error the real call raises.
"""

from __future__ import annotations

import op_calls
import pytest
import torch
from helpers import assert_bitwise_equal, snapshot

import pyoptim


def _bad_sparse_grad(shape, device="cpu"):
    """A COO gradient with an out-of-range row index (torch does not check it when built)."""
    return torch.sparse_coo_tensor(torch.tensor([[0, shape[0]]]), torch.ones(2, *shape[1:]),
                                   shape, check_invariants=False).to(device)


def _snapshot(opt):
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    state = {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
             for p, s in opt.state.items()}
    return params, state


def _assert_unchanged(opt, before):
    params, state = before
    now = [p.detach() for g in opt.param_groups for p in g["params"]]
    for i, (a, b) in enumerate(zip(now, params)):
        assert torch.equal(a, b), f"param {i} changed"
    assert set(state) == set(id(p) for p in opt.state), "state entries added or removed"
    for p, s in opt.state.items():
        old = state[id(p)]
        assert set(s) == set(old), "state keys changed"
        for k, v in s.items():
            same = torch.equal(v, old[k]) if isinstance(v, torch.Tensor) else v == old[k]
            assert same, f"state[{k}] changed"


def _two_groups(make_opt, bad_second):
    """Steps once (state exists), then makes the second group bad; returns (opt, snapshot)."""
    torch.manual_seed(0)
    good = [torch.nn.Parameter(torch.randn(6, 4)) for _ in range(2)]
    second = [torch.nn.Parameter(torch.randn(6, 4)) for _ in range(2)]
    opt = make_opt(good, second)
    for p in good + second:
        p.grad = torch.randn_like(p)
    start = [p.detach().clone() for p in good]
    opt.step()
    assert not torch.equal(good[0].detach(), start[0])  # the good group steps
    for p in good:
        p.grad = torch.randn_like(p)
    bad_second(opt.param_groups[1]["params"])
    return opt, _snapshot(opt)


@pytest.mark.parametrize("cls", ["Adam", "AdamW", "SGD"])
def test_error_in_a_later_group_changes_no_group(cls):
    def make(good, second):
        kw = dict(momentum=0.9) if cls == "SGD" else {}
        return getattr(pyoptim, cls)([{"params": good}, {"params": second, "lr": 0.5}], lr=0.1,
                                     **kw)

    def bad(params):  # Adam: a sparse grad (torch's RuntimeError); SGD: a bad sparse index
        params[1].grad = (_bad_sparse_grad(params[1].shape) if cls == "SGD"
                          else torch.randn(params[1].shape).to_sparse())

    opt, before = _two_groups(make, bad)
    with pytest.raises(IndexError if cls == "SGD" else RuntimeError):
        opt.step()
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("cls", ["Adam", "SGD"])
def test_op_error_in_a_later_group_changes_no_group(cls):
    """The later group's error comes from the op's own checks (overlapping params)."""
    torch.manual_seed(0)
    good = [torch.nn.Parameter(torch.randn(6, 4))]
    base = torch.randn(10)
    overlapping = [torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])]
    kw = dict(momentum=0.9) if cls == "SGD" else {}
    opt = getattr(pyoptim, cls)([{"params": good}], lr=0.1, **kw)
    good[0].grad = torch.randn_like(good[0])
    opt.step()  # state of the good group exists
    opt.add_param_group({"params": overlapping})
    for p in good + overlapping:
        p.grad = torch.randn_like(p)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match="overlap"):
        opt.step()
    _assert_unchanged(opt, before)


def test_sparse_adam_error_in_a_later_group_changes_no_group():
    def make(good, second):
        return pyoptim.SparseAdam([{"params": good}, {"params": second}], lr=0.1)

    torch.manual_seed(0)
    good = [torch.nn.Parameter(torch.randn(6, 4)) for _ in range(2)]
    second = [torch.nn.Parameter(torch.randn(6, 4))]
    opt = make(good, second)
    sparse = [torch.randn(6, 4).to_sparse() for _ in range(3)]
    for p, g in zip(good + second, sparse):
        p.grad = g
    opt.step()
    for p in good:
        p.grad = torch.randn(6, 4).to_sparse()
    second[0].grad = _bad_sparse_grad((6, 4))
    before = _snapshot(opt)
    with pytest.raises(IndexError, match="out of range"):
        opt.step()
    _assert_unchanged(opt, before)


def test_sgd_first_step_buffers_not_stored_when_a_later_group_fails():
    torch.manual_seed(0)
    good = [torch.nn.Parameter(torch.randn(5, 3))]
    second = [torch.nn.Parameter(torch.randn(5, 3))]
    opt = pyoptim.SGD([{"params": good}, {"params": second}], lr=0.1, momentum=0.9)
    good[0].grad = torch.randn(5, 3)
    second[0].grad = _bad_sparse_grad((5, 3))
    start = good[0].detach().clone()
    with pytest.raises(IndexError):
        opt.step()
    assert torch.equal(good[0].detach(), start)
    assert "momentum_buffer" not in opt.state.get(good[0], {})
    second[0].grad = torch.randn(5, 3).to_sparse()
    opt.step()  # now it steps, as a first step: buf = grad
    assert torch.equal(opt.state[good[0]]["momentum_buffer"], good[0].grad)


# ---- state a mixed-precision mode converts while the step is planned ------------------------

# name -> (class, param dtype, the first group's flags before and after the switch, kwargs of
# both, whether "before" is a torch.optim optimizer whose checkpoint the pyoptim one loads)
CONVERSIONS = {
    "adam-torch-ckpt-8bit": (pyoptim.Adam, torch.float32, {}, dict(state_dtype="8bit"), {},
                             True),
    "adamw-torch-ckpt-master": (pyoptim.AdamW, torch.bfloat16, {}, dict(master_weights=True),
                                {}, True),
    "sgd-torch-ckpt-bf16state": (pyoptim.SGD, torch.float32, {}, dict(state_dtype="bfloat16"),
                                 dict(momentum=0.9), True),
    "adamw-master-off": (pyoptim.AdamW, torch.bfloat16, dict(master_weights=True), {}, {},
                         False),
    "adamw-sr-off": (pyoptim.AdamW, torch.bfloat16, dict(stochastic_rounding=True), {}, {},
                     False),
    "adam-8bit-off": (pyoptim.Adam, torch.float32, dict(state_dtype="8bit"), {}, {}, False),
    "adamw-8bit-to-bf16": (pyoptim.AdamW, torch.float32, dict(state_dtype="8bit"),
                           dict(state_dtype="bfloat16"), {}, False),
    "adamw-kahan-on": (pyoptim.AdamW, torch.bfloat16, {}, dict(kahan_summation=True), {},
                       False),
    "adamw-master-on": (pyoptim.AdamW, torch.float16, {}, dict(master_weights=True), {}, False),
    "sgd-master-off": (pyoptim.SGD, torch.bfloat16, dict(master_weights=True), {},
                       dict(momentum=0.9), False),
    "sgd-sr-on": (pyoptim.SGD, torch.bfloat16, {}, dict(stochastic_rounding=True),
                  dict(momentum=0.9), False),
    "sgd-8bit-on": (pyoptim.SGD, torch.float32, {}, dict(state_dtype="8bit"),
                    dict(momentum=0.9), False),
    "sgd-kahan-plain-off": (pyoptim.SGD, torch.bfloat16, dict(kahan_summation=True), {}, {},
                            False),
    "sgd-kahan-plain-to-momentum": (pyoptim.SGD, torch.bfloat16, dict(kahan_summation=True),
                                    dict(kahan_summation=True, momentum=0.9), {}, False),
}
_OFF = dict(master_weights=False, stochastic_rounding=False, kahan_summation=False,
            state_dtype=None, momentum=0)


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)


@pytest.mark.parametrize("bad", ["lr", "grad shape"])
@pytest.mark.parametrize("name", list(CONVERSIONS))
def test_failed_step_leaves_converted_state_as_it_was(name, bad):
    """A step that raises after planning has converted a param's state (a mode switched on or
    off, a torch.optim checkpoint loaded with a mode) leaves every state dict as it was: keys,
    dtypes and values; the next good step converts and steps."""
    cls, dtype, before, after, common, from_torch = CONVERSIONS[name]
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(300, 3, generator=g).to(dtype), torch.randn(257, generator=g).to(dtype)]
    other = [torch.randn(7, generator=g).to(dtype)]
    src_cls = getattr(torch.optim, cls.__name__) if from_torch else cls
    opt = src_cls([{"params": params, **before}, {"params": other}], lr=1e-2, **common)
    for k in range(2):
        _set_grads(params + other, k)
        opt.step()
    if from_torch:
        sd = opt.state_dict()
        opt = cls([{"params": params, **after}, {"params": other}], lr=1e-2, **common)
        opt.load_state_dict(sd)
    else:
        for key in {*before, *after}:
            opt.param_groups[0][key] = after.get(key, _OFF[key])
    _set_grads(params + other, 2)
    if bad == "lr":
        opt.param_groups[1]["lr"] = -1.0
    else:
        other[0].grad.data = torch.zeros(8, dtype=dtype)
    saved = snapshot((params, other, opt.state_dict()["state"]))
    with pytest.raises(ValueError):
        opt.step()
    assert_bitwise_equal(snapshot((params, other, opt.state_dict()["state"])), saved, name)
    opt.param_groups[1]["lr"] = 1e-2
    _set_grads(params + other, 2)
    opt.step()
    assert not torch.equal(params[0], saved[0][0])


@pytest.mark.parametrize("cls", [pyoptim.SGD, pyoptim.Adagrad])
def test_failed_step_leaves_state_of_another_dtype_as_it_was(cls):
    """Note [State in another dtype] (pyoptim/_state.py): a state tensor planning converts to
    its param's new dtype is put back as it was when the step raises."""
    g = torch.Generator().manual_seed(0)
    params, other = [torch.randn(300, 3, generator=g)], [torch.randn(7, generator=g)]
    kw = dict(momentum=0.9) if cls is pyoptim.SGD else {}
    opt = cls([{"params": params}, {"params": other}], lr=1e-2, **kw)
    for k in range(2):
        _set_grads(params + other, k)
        opt.step()
    for t in params + other:
        t.data = t.data.double()
    _set_grads(params + other, 2)
    opt.param_groups[1]["lr"] = -1.0
    saved = snapshot((params, other, opt.state_dict()["state"]))
    with pytest.raises(ValueError):
        opt.step()
    assert_bitwise_equal(snapshot((params, other, opt.state_dict()["state"])), saved, "state")
    opt.param_groups[1]["lr"] = 1e-2
    opt.step()
    assert all(t.dtype == torch.float64 for s in opt.state.values() for t in s.values()
               if t.is_floating_point() and t.dim() > 0)


# ---- the mode itself, per op ------------------------------------------------------------------

ADAM_KW = dict(lr=0.1, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
               maximize=False, decoupled=False)
SGD_KW = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False, is_first_step=False)
SPARSE_ADAM_KW = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                      maximize=False)


def _op_cases(bad: bool, device: str):
    """(name, tensors to watch, call(validate_only)) for each op; `bad`: the last tensor's input
    is invalid."""
    torch.manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape).to(device)

    p = [rnd(5, 3) for _ in range(2)]
    g = [rnd(5, 3) for _ in range(2)]
    m = [rnd(5, 3) for _ in range(2)]
    v = [rnd(5, 3).abs() for _ in range(2)]
    steps = [torch.tensor(3.0) for _ in range(2)]  # host step counts, on every device
    if bad:
        g[1] = rnd(5, 4)  # shape mismatch
    sg = [torch.randn(5, 3).to_sparse().to(device) for _ in range(2)]
    if bad:
        sg[1] = _bad_sparse_grad((5, 3), device)
    return [
        ("adam_", p + m + v + steps,
         lambda vo: op_calls.adam_(p, g, m, v, [], steps, **ADAM_KW, validate_only=vo)),
        ("sgd_", p + m, lambda vo: op_calls.sgd_(p, g, m, **SGD_KW, validate_only=vo)),
        ("sgd_-sparse", p + m,
         lambda vo: op_calls.sgd_(p, sg, m, **SGD_KW, validate_only=vo)),
        ("sparse_adam_", p + m + v,
         lambda vo: op_calls.sparse_adam_(p, sg, m, v, [3, 3], **SPARSE_ADAM_KW,
                                          validate_only=vo)),
    ]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index", range(4), ids=["adam_", "sgd_", "sgd_-sparse", "sparse_adam_"])
def test_validate_only_writes_nothing_and_raises_what_the_call_raises(index, device):
    name, watched, call = _op_cases(False, device)[index]
    before = [t.clone() for t in watched]
    call(True)
    assert all(torch.equal(a, b) for a, b in zip(watched, before)), name
    call(False)  # the same call for real writes
    assert not all(torch.equal(a, b) for a, b in zip(watched, before)), name

    name, watched, call = _op_cases(True, device)[index]
    before = [t.clone() for t in watched]
    with pytest.raises((ValueError, IndexError)) as real:
        call(False)
    with pytest.raises(real.type) as checked:
        call(True)
    assert str(checked.value) == str(real.value)
    assert all(torch.equal(a, b) for a, b in zip(watched, before)), name
