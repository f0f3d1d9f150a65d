"""pyoptim.SparseAdam: torch.optim.SparseAdam with one fused native pass per step.

The class subclasses torch.optim.SparseAdam, so the constructor, its defaults and error messages
(sparse or complex params), param groups, hooks, LR schedulers and state_dict handling are
torch's own. Only `step` differs: it makes one call to `torch.ops.pyoptim.sparse_adam_` per
device, covering every param group, which reads each sparse gradient as it comes from
`nn.Embedding(sparse=True)` / `nn.EmbeddingBag(sparse=True)` (uncoalesced: no `coalesce()`, no
`sparse_mask`), groups its row indices, sums duplicate rows in a fixed order and updates each
touched row once, in parallel.

Semantics are torch's: duplicate indices are summed before the update; the formula is
SparseAdam's own (eps added to sqrt(exp_avg_sq) before the bias corrections, which are folded
into the step size); `state["step"]` is a Python int counting every step in which the param had
a gradient, even one with no entries. float32 and float64 results equal torch's bit for bit
where torch's sqrt is IEEE's and its coalesce() sums a row's duplicates in position order
(tests/reference_sparse_adam.py's ieee_torch_mode pins both; torch's CPU sqrt is MKL's, which is
not correctly rounded, and coalesce() orders large inputs by an unstable sort); bfloat16 and
float16 params are computed in float32 and rounded once on store (torch rounds after every
operation). Bad input raises before anything, step counts included, is changed, in any param
group (one call covers every group; Note [All-or-nothing step] in csrc/ops/groups.h).

Beyond torch (opt-in): `weight_decay` (default 0: torch's update exactly) applies decoupled
weight decay, `param *= 1 - lr * weight_decay`, to the rows touched in this step only, before
the Adam update, as AdamW does for dense params (pytorch issue 25484). It can be set per
param group and is kept in state_dict param groups (torch.optim.SparseAdam ignores the key).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._state import DeviceCall, FusedStep, Plan, hyper_args

__all__ = ["SparseAdam"]

_DENSE_MSG = "SparseAdam does not support dense gradients, please consider Adam instead"
_sparse_adam_ = torch.ops.pyoptim.sparse_adam_.default


class SparseAdam(FusedStep, torch.optim.SparseAdam):
    _step_supports_amp_scaling = False  # torch's SparseAdam takes no GradScaler arguments
    _traceable = False  # sparse grads, int step counts: eager under torch.compile

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        *,
        weight_decay: float = 0.0,
    ) -> None:
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self._default_weight_decay = weight_decay
        super().__init__(params, lr=lr, betas=betas, eps=eps, maximize=maximize)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # torch's SparseAdam builds its own defaults; add ours before the group is filled in,
        # only where it is on (a flag that is off is not stored: torch's param groups).
        if getattr(self, "_default_weight_decay", 0.0):
            self.defaults.setdefault("weight_decay", self._default_weight_decay)
        wd = param_group.get("weight_decay", self.defaults.get("weight_decay", 0.0))
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd}")
        super().add_param_group(param_group)

    def _hyper(self, group: dict) -> tuple:
        beta1, beta2 = group["betas"]
        return group["lr"], beta1, beta2, group["eps"], group.get("weight_decay", 0.0)

    def _flags(self, group: dict) -> tuple:
        return (bool(group.get("maximize", False)),)

    def _state_keys(self, plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return ("step", "exp_avg", "exp_avg_sq"), ()

    def _init_param(self, plan: Plan, group: dict, p: Tensor) -> bool:
        if not p.grad.is_sparse:
            raise RuntimeError(_DENSE_MSG)
        state = self.state[p]
        if len(state) == 0:  # lazy state initialization, as torch.optim.SparseAdam
            plan.fresh.append(p)  # removed again if the step raises
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return True

    def _run(self, plan: Plan, call: DeviceCall, params: list[Tensor], grads: list[Tensor],
             states: list[list[Any]], grad_scale: Tensor | None,
             found_inf: Tensor | None, validate_only: bool) -> None:
        steps, exp_avgs, exp_avg_sqs = states
        hyper, flags, lr_tensors = hyper_args(self, plan.groups, call.device)
        _sparse_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [float(s) for s in steps],  # the counts before this step (the op checks them)
            call.group_sizes,
            hyper,
            flags,
            lr_tensors,  # a Tensor lr: step_size is computed in its dtype, as torch does
            validate_only,
        )

    def _commit(self, plan: Plan, found_inf: Tensor | None) -> None:
        for state in plan.dicts:
            state["step"] += 1  # as torch.optim.SparseAdam counts: an int, or a loaded float
            # or tensor (in place) stays one


SparseAdam.__doc__ = (
    "Drop-in torch.optim.SparseAdam with a fused native step (see pyoptim.sparse_adam).\n\n"
    "Extra keyword-only argument:\n"
    "    weight_decay (float, optional): decoupled weight decay applied to the rows touched in\n"
    "        each step only, ``param *= 1 - lr * weight_decay`` before the update (default: 0,\n"
    "        torch's update exactly). Not in torch.optim.SparseAdam.\n\n"
    + (torch.optim.SparseAdam.__doc__ or "")
)
