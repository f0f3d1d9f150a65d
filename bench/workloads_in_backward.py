"""The optimizer-in-backward recipe: one optimizer per parameter, each stepped by its own
`register_post_accumulate_grad_hook` as soon as the param's grad is ready (torch's tutorial
"How to save memory by fusing the optimizer step into the backward pass"). A step is then 1000
`opt.step()` calls on one small tensor each: what it measures is the fixed cost of one
`step()`, which this recipe pays once per parameter.

  in-backward/sgd-1000x1k     SGD (lr=0.1, plain), 1000 float32 params of 1024 elements
  in-backward/adamw-1000x1k   AdamW (lr=1e-3, weight_decay=1e-2), the same params
The same workloads on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import pyoptim

from .bytes import adam_bytes_per_elem, sgd_bytes_per_elem
from .harness import BenchConfig, SetupFn, Workload
from .workloads_adam import _fmt

N_PARAMS = 1000
TORCH_IMPLS = {
    "torch-forloop": dict(foreach=False),
    "torch-foreach": dict(foreach=True),
    "torch-fused": dict(fused=True),
}


def _make_setup(opt_cls: Callable, kwargs: dict, numel: int, device: str) -> SetupFn:
    def setup():
        gen = torch.Generator(device="cpu").manual_seed(0)
        opts = []
        for _ in range(N_PARAMS):
            p = torch.randn(numel, generator=gen).to(device)
            p.grad = (torch.randn(numel, generator=gen) * 1e-2).to(device)
            opts.append(opt_cls([p], **kwargs))
        steps = [o.step for o in opts]

        def step():
            for s in steps:  # what the hooks do, one parameter at a time
                s()

        return step

    return setup


def workloads(cfg: BenchConfig) -> list[Workload]:
    dev = cfg.device
    numel = cfg.n(1024, minimum=16)
    cases = [
        ("sgd", torch.optim.SGD, pyoptim.SGD, dict(lr=0.1),
         sgd_bytes_per_elem(torch.float32, momentum=False)),
        ("adamw", torch.optim.AdamW, pyoptim.AdamW, dict(lr=1e-3, weight_decay=1e-2),
         adam_bytes_per_elem(torch.float32)),
    ]
    out = []
    for group, torch_cls, py_cls, kw, bytes_per_elem in cases:
        impls: dict[str, SetupFn] = {
            name: _make_setup(torch_cls, dict(kw, **flags), numel, dev)
            for name, flags in TORCH_IMPLS.items()
        }
        impls["pyoptim"] = _make_setup(py_cls, kw, numel, dev)
        out.append(Workload(
            name=f"in-backward/{group}-{N_PARAMS}x{_fmt(numel)}",
            group="in-backward",
            numel=numel * N_PARAMS,
            n_tensors=N_PARAMS,
            bytes_per_step=bytes_per_elem * numel * N_PARAMS,
            impls=impls,
            baseline="pyoptim",
            description=f"optimizer in backward: {N_PARAMS} {torch_cls.__name__} optimizers of "
                        "one param each, stepped one after another",
            targets={"torch-forloop": 1.0},
        ))
    return out
