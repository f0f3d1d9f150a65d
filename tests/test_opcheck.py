"""torch.library.opcheck on every pyoptim op, over several samples.

opcheck's default test_utils all apply to adam_ (schema / mutation annotations, autograd
registration, fake tensors, AOT dispatch with dynamic shapes): a mutating op that returns ()
needs no fake kernel, and every one of them passes, so none is deselected. The static AOT
dispatch check is added explicitly.
"""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from conftest import dtype_id
from helpers import any_changed, snapshot
from strategies import AdamCase, op_args

TEST_UTILS = (
    "test_schema",
    "test_autograd_registration",
    "test_faketensor",
    "test_aot_dispatch_static",
    "test_aot_dispatch_dynamic",
)

FLAGS = {
    "adam": dict(amsgrad=False, maximize=False, decoupled=False, weight_decay=0.0),
    "adam-l2-amsgrad": dict(amsgrad=True, maximize=False, decoupled=False, weight_decay=0.1),
    "adamw-maximize": dict(amsgrad=False, maximize=True, decoupled=True, weight_decay=0.01),
    "adamw-amsgrad-maximize": dict(amsgrad=True, maximize=True, decoupled=True, weight_decay=0.01),
}
EXTRAS = {
    "plain": lambda: {},
    "grad_scale": lambda: dict(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0)),
    "lr_tensor": lambda: dict(lr_tensor=torch.tensor(3e-3)),
}


def sample(flags: str, dtype: torch.dtype, step0: int = 0):
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **FLAGS[flags])
    case = AdamCase(sizes=[5, 33, 0], dtype=dtype, hp=hp, seed=5, step0=step0, skips=(False,))
    state = case.state()
    return case, state, op_args(state, case.grads(0))


@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=dtype_id)
@pytest.mark.parametrize("flags", list(FLAGS))
def test_opcheck_adam(flags, dtype, extra):
    case, state, args = sample(flags, dtype, step0=3)
    kwargs = dict(case.hp, **EXTRAS[extra]())
    result = opcheck(torch.ops.pyoptim.adam_.default, args, kwargs, test_utils=TEST_UTILS)
    assert result == {name: "SUCCESS" for name in TEST_UTILS}
    # the sample really exercises the op: running it moves the params and counts the step
    before = snapshot(state)
    torch.ops.pyoptim.adam_.default(*args, **kwargs)
    assert any_changed(before["params"], state["params"])
    assert state["state_steps"][0].item() == before["state_steps"][0].item() + 1
