"""A mixed-precision flag of a param group changed between steps (master_weights,
stochastic_rounding, kahan_summation, state_dtype; pyoptim._mixed.settle_modes_off and
init_states / init_master).

Switched off, the next step must be the step of a plain optimizer holding the state that
`torch_state_dict()` exports at that point (moments in the param's dtype, pyoptim's own keys
dropped): bitwise, params and state. Switched on (a state_dtype), the next step must be that of
an optimizer constructed with it that loads the plain state (the documented conversion of a
torch.optim checkpoint). A group value set by hand is checked and normalized as at construction,
and an invalid combination raises before anything is written. differentiable=True (torch.optim's
own step, for every param group) refuses a mode in any group, at construction and when switched
on between steps; with the modes switched off, its step is torch.optim's on the exported state.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import any_changed, assert_bitwise_equal, snapshot

import pyoptim

STEPS = 3

# name -> (class, param dtype, the mode's constructor kwargs, kwargs of both runs)
MODES = {
    "adamw-master": (pyoptim.AdamW, torch.bfloat16, dict(master_weights=True), {}),
    "adam-master-fp16-amsgrad": (pyoptim.Adam, torch.float16, dict(master_weights=True),
                                 dict(amsgrad=True)),
    "adamw-sr": (pyoptim.AdamW, torch.bfloat16, dict(stochastic_rounding=True), {}),
    "adamw-kahan": (pyoptim.AdamW, torch.bfloat16, dict(kahan_summation=True), {}),
    "adamw-bf16state": (pyoptim.AdamW, torch.float32, dict(state_dtype=torch.bfloat16), {}),
    "adam-8bit": (pyoptim.Adam, torch.float32, dict(state_dtype="8bit"),
                  dict(weight_decay=0.1)),
    "sgd-master": (pyoptim.SGD, torch.bfloat16, dict(master_weights=True), dict(momentum=0.9)),
    "sgd-sr": (pyoptim.SGD, torch.bfloat16, dict(stochastic_rounding=True),
               dict(momentum=0.9)),
    "sgd-bf16state": (pyoptim.SGD, torch.float32, dict(state_dtype="bfloat16"),
                      dict(momentum=0.9, nesterov=True)),
    "sgd-8bit": (pyoptim.SGD, torch.float32, dict(state_dtype="8bit"), dict(momentum=0.9)),
    "sgd-kahan": (pyoptim.SGD, torch.bfloat16, dict(kahan_summation=True), dict(momentum=0.9)),
    "sgd-kahan-plain": (pyoptim.SGD, torch.float16, dict(kahan_summation=True), {}),
}


def _params(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(300, 3, generator=g).to(dtype), torch.randn(257, generator=g).to(dtype)]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g).to(p.dtype) * 1e-2 for p in params]


def _step(opt: torch.optim.Optimizer, params: list[torch.Tensor], step: int) -> None:
    for p, g in zip(params, _grads(params, step)):
        p.grad = g
    torch.manual_seed(1000 + step)  # seeds drawn in this step, the same for both runs
    opt.step()


def _stepped_with_reference(name, ref_cls=None):
    """MODES[name]'s optimizer after STEPS steps, and a `ref_cls` (default: the same class
    without the mode) on copies of its params that loaded its torch_state_dict()."""
    cls, dtype, mode, common = MODES[name]
    params = _params(dtype)
    opt = cls(params, lr=1e-2, **mode, **common)
    for k in range(STEPS):
        _step(opt, params, k)
    ref_params = [p.clone() for p in params]
    ref = (ref_cls or cls)(ref_params, lr=1e-2, **common)
    ref.load_state_dict(copy.deepcopy(opt.torch_state_dict()))  # (shares opt's tensors, as
    # torch's state_dict does: `step` would count both runs' steps)
    return mode, params, opt, ref_params, ref


@pytest.mark.parametrize("name", list(MODES))
def test_mode_switched_off_steps_as_the_exported_state(name):
    mode, params, opt, ref_params, ref = _stepped_with_reference(name)
    for key in mode:
        opt.param_groups[0][key] = None if key == "state_dtype" else False
    before = snapshot(params)
    _step(opt, params, STEPS)
    _step(ref, ref_params, STEPS)
    assert any_changed(before, params), name  # a step that wrote nothing would agree too
    assert_bitwise_equal(snapshot(params), snapshot(ref_params), name)
    assert_bitwise_equal(snapshot(opt.state_dict()["state"]),
                         snapshot(ref.state_dict()["state"]), name)


@pytest.mark.parametrize("name", ["adamw-bf16state", "adam-8bit", "sgd-bf16state", "sgd-8bit"])
@pytest.mark.parametrize("by_hand", ["canonical", "torch.bfloat16"])
def test_state_dtype_switched_on_converts_the_state(name, by_hand):
    cls, dtype, mode, common = MODES[name]
    value = mode["state_dtype"]
    if by_hand == "torch.bfloat16":
        if value == "8bit":
            pytest.skip("the 8-bit format has one spelling")
        value = torch.bfloat16  # normalized at the next step, as at construction
    params = _params(dtype)
    opt = cls(params, lr=1e-2, **common)
    for k in range(STEPS):
        _step(opt, params, k)
    ref_params = [p.clone() for p in params]
    ref = cls(ref_params, lr=1e-2, **mode, **common)
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))  # plain: converted at the next step
    ref.param_groups[0]["state_dtype"] = mode["state_dtype"]  # the load brought the plain one
    opt.param_groups[0]["state_dtype"] = value
    before = snapshot(params)
    _step(opt, params, STEPS)
    _step(ref, ref_params, STEPS)
    assert any_changed(before, params), name  # a step that wrote nothing would agree too
    assert_bitwise_equal(snapshot(params), snapshot(ref_params), name)
    assert_bitwise_equal(snapshot(opt.state_dict()["state"]),
                         snapshot(ref.state_dict()["state"]), name)
    assert opt.param_groups[0]["state_dtype"] in ("bfloat16", "8bit")


@pytest.mark.parametrize("key, value, match", [
    ("master_weights", True, "master_weights=True"),
    ("state_dtype", "int4", "Invalid state_dtype"),
    ("amsgrad", True, "does not support amsgrad"),
])
def test_invalid_switch_raises_before_writing(key, value, match):
    params = _params(torch.float32)
    opt = pyoptim.AdamW(params, lr=1e-2, state_dtype="8bit")
    _step(opt, params, 0)
    before = snapshot((params, opt.state_dict()["state"]))
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=match):
        _step(opt, params, 1)
    assert_bitwise_equal(snapshot((params, opt.state_dict()["state"])), before, key)


# ---- differentiable=True: torch.optim's own step, for every param group ------------------------

@pytest.mark.parametrize("name", list(MODES))
def test_differentiable_in_any_group_refuses_a_mode_in_any_group(name):
    cls, dtype, mode, common = MODES[name]
    mode_group = {"params": _params(dtype), **mode}
    plain = {"params": [torch.randn(5, dtype=dtype)], "differentiable": True}
    for groups in ([mode_group, plain], [plain, mode_group]):
        with pytest.raises(ValueError, match="does not support differentiable=True"):
            cls(copy.copy(groups), lr=1e-2, **common)
    opt = cls([mode_group], lr=1e-2, **common)
    with pytest.raises(ValueError, match="does not support differentiable=True"):
        opt.add_param_group(dict(plain))
    assert len(opt.param_groups) == 1
    opt = cls([dict(plain)], lr=1e-2, **common)
    with pytest.raises(ValueError, match="does not support differentiable=True"):
        opt.add_param_group(dict(mode_group))
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("where", ["same group", "other group"])
def test_differentiable_switched_on_with_a_mode_raises_before_writing(name, where):
    cls, dtype, mode, common = MODES[name]
    params, others = _params(dtype), [torch.randn(7, dtype=dtype)]
    opt = cls([{"params": params, **mode}, {"params": others}], lr=1e-2, **common)
    _step(opt, params + others, 0)
    opt.param_groups[0 if where == "same group" else 1]["differentiable"] = True
    before = snapshot((params, others, opt.state_dict()["state"]))
    with pytest.raises(ValueError, match="does not support differentiable=True"):
        _step(opt, params + others, 1)
    assert_bitwise_equal(snapshot((params, others, opt.state_dict()["state"])), before, name)


@pytest.mark.parametrize("name", list(MODES))
def test_mode_switched_off_and_differentiable_on_steps_as_torch(name):
    """torch.optim's step on the state a mode left, as pyoptim's step puts it (the state that
    torch_state_dict() exports)."""
    torch_cls = getattr(torch.optim, MODES[name][0].__name__)
    mode, params, opt, ref_params, ref = _stepped_with_reference(name, torch_cls)
    ref.param_groups[0]["differentiable"] = True
    for key in mode:
        opt.param_groups[0][key] = None if key == "state_dtype" else False
    opt.param_groups[0]["differentiable"] = True
    _step(opt, params, STEPS)
    _step(ref, ref_params, STEPS)
    assert_bitwise_equal(snapshot(params), snapshot(ref_params), name)
    assert_bitwise_equal(snapshot(opt.torch_state_dict()["state"]),
                         snapshot(ref.state_dict()["state"]), name)
