"""pyoptim.Adam and pyoptim.AdamW: torch.optim.Adam / AdamW with a fused native step.

The classes subclass torch.optim.Adam / torch.optim.AdamW, so the constructor, its defaults and
its error messages, param groups, hooks, LR schedulers and state_dict handling are torch's own.
Only `step` differs: it builds the tensor lists of each param group and makes one call to
`torch.ops.pyoptim.adam_`, which validates everything, then updates every tensor of the group
in one parallel region (and increments the step counts).

State per param is torch's: `step` (a 0-dim float32 tensor), `exp_avg`, `exp_avg_sq`, and
`max_exp_avg_sq` with amsgrad, so state_dicts load both ways between torch.optim and pyoptim.

Flags: `foreach` and `fused` are accepted and validated as torch validates them; the step is
always pyoptim's fused kernel. `differentiable=True` falls back to torch's own implementation
(autograd cannot see through a native kernel). On CUDA, `capturable=True` or `fused=True` keeps
`step` on the param's device (as torch does) and the kernel reads and increments it there, with a
Tensor lr read on the device too, so the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Optional

import torch
from torch import Tensor

from . import _ops
from ._state import GroupCache, scalar_dtype

__all__ = ["Adam", "AdamW"]

_SPARSE_MSG = "Adam does not support sparse gradients, please consider SparseAdam instead"


class _AdamStep:
    """The fused `step` shared by Adam and AdamW (first in their MRO)."""

    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf to step()

    def _build_cache(self, group: dict, grads: list) -> GroupCache:
        amsgrad = group["amsgrad"]
        cache = GroupCache(group, self.state, grads, amsgrad)
        for i in cache.active:
            p, g = group["params"][i], grads[i]
            if g.is_sparse:
                raise RuntimeError(_SPARSE_MSG)
            state = self.state[p]
            if len(state) == 0:  # lazy state initialization, as torch.optim.Adam
                if group["capturable"] or group["fused"]:
                    step = torch.zeros((), dtype=scalar_dtype(group["fused"]), device=p.device)
                else:
                    step = torch.tensor(0.0, dtype=scalar_dtype(), device="cpu")
                state["step"] = step
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            cache.add(
                i,
                p,
                state=[state["exp_avg"], state["exp_avg_sq"]]
                + ([state["max_exp_avg_sq"]] if amsgrad else []),
                step=state["step"],
            )
        return cache

    def _group_cache(self, group: dict, grads: list) -> GroupCache:
        caches = self.__dict__.setdefault("_pyoptim_caches", {})
        cache = caches.get(id(group))
        if cache is None or not cache.valid(group, self.state, grads, group["amsgrad"]):
            cache = self._build_cache(group, grads)
            caches[id(group)] = cache
        return cache

    @torch.no_grad()
    def step(self, closure: Optional[Any] = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if any(g["differentiable"] for g in self.param_groups):
            return super().step(closure)  # torch's own math, differentiable through autograd

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_scale: Optional[Tensor] = getattr(self, "grad_scale", None)
        found_inf: Optional[Tensor] = getattr(self, "found_inf", None)
        for group in self.param_groups:
            grads = [p.grad for p in group["params"]]
            if not any(map(operator.is_not, grads, repeat(None))):
                continue
            cache = self._group_cache(group, grads)
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for chunk in cache.chunks(grads):
                # A Tensor lr on the GPU (capturable) is read by the kernel: no host sync, so
                # the step can be captured in a CUDA graph. Elsewhere it is read here.
                lr_tensor = None
                if isinstance(lr, Tensor) and lr.device.type != "cpu":
                    lr_tensor = _on(lr, chunk.device)
                _ops.adam_(
                    chunk.params,
                    chunk.grads,
                    chunk.state[0],
                    chunk.state[1],
                    chunk.state[2] if group["amsgrad"] else [],
                    chunk.steps,
                    lr=0.0 if lr_tensor is not None else float(lr),
                    beta1=float(beta1),
                    beta2=float(beta2),
                    weight_decay=float(group["weight_decay"]),
                    eps=float(group["eps"]),
                    amsgrad=group["amsgrad"],
                    maximize=group["maximize"],
                    decoupled=group["decoupled_weight_decay"],
                    lr_tensor=lr_tensor,
                    grad_scale=_on(grad_scale, chunk.device),
                    found_inf=_on(found_inf, chunk.device),
                )
        return loss


def _on(t: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    if t is None or t.device == device:
        return t
    return t.to(device)


class Adam(_AdamStep, torch.optim.Adam):
    __doc__ = (
        "Drop-in torch.optim.Adam with a fused native step (see pyoptim.adam).\n\n"
        + (torch.optim.Adam.__doc__ or "")
    )


class AdamW(_AdamStep, torch.optim.AdamW):
    __doc__ = (
        "Drop-in torch.optim.AdamW with a fused native step (see pyoptim.adam).\n\n"
        + (torch.optim.AdamW.__doc__ or "")
    )
