"""pyoptim.SparseAdam: torch.optim.SparseAdam with one fused native pass per param group.

The class subclasses torch.optim.SparseAdam, so the constructor, its defaults and error messages
(sparse or complex params), param groups, hooks, LR schedulers and state_dict handling are
torch's own. Only `step` differs: it makes one call to `torch.ops.pyoptim.sparse_adam_` per
param group, which reads each sparse gradient as it comes from `nn.Embedding(sparse=True)` /
`nn.EmbeddingBag(sparse=True)` (uncoalesced: no `coalesce()`, no `sparse_mask`), groups its row
indices, sums duplicate rows in a fixed order and updates each touched row once, in parallel.

Semantics are torch's: duplicate indices are summed before the update; the formula is
SparseAdam's own (eps added to sqrt(exp_avg_sq) before the bias corrections, which are folded
into the step size); `state["step"]` is a Python int counting every step in which the param had
a gradient, even one with no entries. float32 and float64 results equal torch's bit for bit;
bfloat16 and float16 params are computed in float32 and rounded once on store (torch rounds
after every operation). Bad input raises before anything, step counts included, is changed, in
any param group (the step's calls are first made in check-only mode when there are several).

Beyond torch (opt-in): `weight_decay` (default 0: torch's update exactly) applies decoupled
weight decay, `param *= 1 - lr * weight_decay`, to the rows touched in this step only, before
the Adam update, as AdamW does for dense params (pytorch issue 25484). It can be set per
param group and is kept in state_dict param groups (torch.optim.SparseAdam ignores the key).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from . import _ops
from ._state import run_all_or_nothing

__all__ = ["SparseAdam"]

_DENSE_MSG = "SparseAdam does not support dense gradients, please consider Adam instead"


def _to_float(x: Any) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


class SparseAdam(torch.optim.SparseAdam):
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
        # torch's SparseAdam builds its own defaults; add ours before the group is filled in.
        self.defaults.setdefault("weight_decay", getattr(self, "_default_weight_decay", 0.0))
        wd = param_group.get("weight_decay", self.defaults["weight_decay"])
        if not 0.0 <= wd:
            raise ValueError(f"Invalid weight_decay value: {wd}")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Optional[Any] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Every group's gradients are checked before any group is updated.
        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if not all(g.is_sparse for g in grads):
                raise RuntimeError(_DENSE_MSG)
            if params:
                work.append((group, params, grads))

        plans = []
        for group, params, grads in work:
            # Lazy state, as torch's, but stored only once every op of the step has succeeded,
            # so a step that raises leaves the optimizer exactly as it was.
            states = [self.state.get(p) for p in params]
            exp_avgs, exp_avg_sqs, steps, fresh = [], [], [], []
            for p, state in zip(params, states):
                if not state:
                    state = {
                        "step": 0,
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                    fresh.append((p, state))
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(int(state["step"]) + 1)
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            call = functools.partial(
                _ops.sparse_adam_,
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                lr=_to_float(lr),
                beta1=float(beta1),
                beta2=float(beta2),
                eps=float(group["eps"]),
                weight_decay=float(group.get("weight_decay", 0.0)),
                maximize=bool(group.get("maximize", False)),
                # a Tensor lr: step_size is computed in its dtype, as torch does
                lr_tensor=lr.detach() if isinstance(lr, Tensor) else None,
            )

            def commit(params=params, steps=steps, fresh=fresh) -> None:
                for p, state in fresh:
                    self.state[p] = state
                for p, step in zip(params, steps):
                    self.state[p]["step"] = step

            plans.append(([call], commit))
        run_all_or_nothing(plans)
        return loss


SparseAdam.__doc__ = (
    "Drop-in torch.optim.SparseAdam with a fused native step (see pyoptim.sparse_adam).\n\n"
    "Extra keyword-only argument:\n"
    "    weight_decay (float, optional): decoupled weight decay applied to the rows touched in\n"
    "        each step only, ``param *= 1 - lr * weight_decay`` before the update (default: 0,\n"
    "        torch's update exactly). Not in torch.optim.SparseAdam.\n\n"
    + (torch.optim.SparseAdam.__doc__ or "")
)
