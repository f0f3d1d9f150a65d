"""Note [Work layout] (csrc/ops/checks.h): a dense param in another layout than row-major
(transposed, channels-last) whose grad or state has other strides steps in the param's own
layout, copying only what differs; the stochastic modes and 8-bit states keep row-major copies.
Either way the bits are those of the same step on row-major tensors, and the caller's tensors
are updated in place."""

import pytest
import torch

import pyoptim

BF16 = torch.bfloat16

CONFIGS = {
    "adam": (pyoptim.Adam, {}, torch.float32),
    "adam-amsgrad": (pyoptim.Adam, {"amsgrad": True, "weight_decay": 0.1}, torch.float32),
    "adamw-f64": (pyoptim.AdamW, {}, torch.float64),
    "adamw-master": (pyoptim.AdamW, {"master_weights": True}, BF16),
    "adamw-sr": (pyoptim.AdamW, {"stochastic_rounding": True}, BF16),
    "adamw-kahan": (pyoptim.AdamW, {"kahan_summation": True}, torch.float16),
    "adamw-bf16-states": (pyoptim.AdamW, {"state_dtype": torch.bfloat16}, torch.float32),
    "adamw-8bit": (pyoptim.AdamW, {"state_dtype": "8bit"}, torch.float32),
    "sgd": (pyoptim.SGD, {"momentum": 0.9}, torch.float32),
    "sgd-nesterov": (pyoptim.SGD, {"momentum": 0.9, "nesterov": True, "dampening": 0.0},
                     torch.float32),
    "sgd-plain": (pyoptim.SGD, {}, BF16),
    "sgd-master": (pyoptim.SGD, {"momentum": 0.9, "master_weights": True}, BF16),
    "sgd-sr": (pyoptim.SGD, {"momentum": 0.9, "stochastic_rounding": True}, BF16),
    "sgd-kahan": (pyoptim.SGD, {"momentum": 0.9, "kahan_summation": True}, BF16),
    "sgd-8bit": (pyoptim.SGD, {"momentum": 0.9, "state_dtype": "8bit"}, torch.float32),
    "adamax": (pyoptim.Adamax, {}, torch.float32),
    "adagrad": (pyoptim.Adagrad, {}, torch.float32),
}


def _transposed(t):
    return t.reshape(t.shape[0], -1).t().contiguous().t().reshape(t.shape) if t.dim() == 2 \
        else t.contiguous(memory_format=torch.channels_last)


LAYOUTS = {
    # name: (shape, param layout, grad layout)
    "transposed-param-contiguous-grad": ((33, 70), _transposed, torch.Tensor.contiguous),
    "channels-last-param-contiguous-grad": ((5, 6, 7, 9), _transposed, torch.Tensor.contiguous),
    "contiguous-param-transposed-grad": ((33, 70), torch.Tensor.contiguous, _transposed),
    "transposed-param-size-1-dim": ((1, 300), lambda t: t.t().contiguous().t(),
                                    torch.Tensor.contiguous),
}


def _lr(cls):
    return 1e-1 if cls is pyoptim.SGD else 1e-2


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_other_layouts_step_as_row_major(config, layout):
    cls, kw, dtype = CONFIGS[config]
    shape, make_param, make_grad = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(shape, generator=gen).to(dtype)
    grads = [torch.randn(shape, generator=gen).to(dtype) for _ in range(3)]
    ref = torch.nn.Parameter(init.clone())
    odd = torch.nn.Parameter(make_param(init.clone()))
    assert torch.equal(odd, ref)
    opt_ref = cls([ref], lr=_lr(cls), **kw)
    opt_odd = cls([odd], lr=_lr(cls), **kw)
    held = None
    for k, g in enumerate(grads):
        ref.grad = g.clone()
        odd.grad = make_grad(g.clone())
        torch.manual_seed(k)  # the seeded modes: the same seed for both
        opt_ref.step()
        torch.manual_seed(k)
        opt_odd.step()
        state = opt_odd.state[odd]
        if held is None:
            held = {key: v for key, v in state.items() if isinstance(v, torch.Tensor)}
        # the caller's tensors, updated in place
        assert all(state[key] is v for key, v in held.items())
        assert torch.equal(odd.detach().contiguous().view(-1).view(torch.uint8),
                           ref.detach().contiguous().view(-1).view(torch.uint8)), k
        for key, v in opt_ref.state[ref].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(state[key].contiguous(), v.contiguous()), (k, key)
