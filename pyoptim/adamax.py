"""pyoptim.Adamax: torch.optim.Adamax with a fused native step.

The class subclasses torch.optim.Adamax, so the constructor, its defaults and error messages,
param groups, hooks, LR schedulers and state_dict handling are torch's own (state: `step`, a
0-dim float32 tensor, `exp_avg`, `exp_inf`; state_dicts load both ways). Only `step` differs:
one call to `torch.ops.pyoptim.adamax_` per device covers every param group; the math mirrors
torch's single-tensor Adamax expression by expression (csrc/include/pyoptim/math/adamax.h).
Flags: `foreach` is accepted and validated as torch validates it; the step is always pyoptim's.
`differentiable=True` falls back to torch's implementation. `capturable=True` keeps `step` on
the param's device (CUDA; torch refuses it for CPU params, and so does pyoptim).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._dense import DenseStep
from ._state import check_capturable, scalar_dtype

__all__ = ["Adamax"]


class Adamax(DenseStep, torch.optim.Adamax):
    __doc__ = (
        "Drop-in torch.optim.Adamax with a fused native step (see pyoptim.adamax).\n\n"
        + (torch.optim.Adamax.__doc__ or "")
    )

    _op = torch.ops.pyoptim.adamax_.default
    _states = ("exp_avg", "exp_inf")
    _sparse_msg = "Adamax does not support sparse gradients"

    def _hyper(self, group: dict) -> tuple:
        beta1, beta2 = group["betas"]
        return group["lr"], beta1, beta2, group["eps"], group["weight_decay"]

    def _flags(self, group: dict) -> tuple:
        return (group["maximize"],)

    def _layout(self, groups: list[dict]) -> Any:
        # whether _init_param makes torch's capturable check (torch checks in every step)
        return [g["capturable"] for g in groups]

    def _init_state(self, group: dict, p: Tensor, state: dict) -> None:
        if group["capturable"]:
            state["step"] = torch.zeros((), dtype=scalar_dtype(), device=p.device)
        else:
            state["step"] = torch.tensor(0.0, dtype=scalar_dtype())
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _init_param(self, plan, group: dict, p: Tensor) -> bool:
        has_state = super()._init_param(plan, group, p)
        if group["capturable"] and not torch.compiler.is_compiling():
            # torch's check, before anything is written
            check_capturable(group, p, self.state[p]["step"])
        return has_state
