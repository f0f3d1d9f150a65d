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

import functools

import torch
from torch import Tensor

from . import _ops
from ._state import Chunk, FusedStep, GroupCache, GroupPlan, on_device, scalar_dtype

__all__ = ["Adam", "AdamW"]

_SPARSE_MSG = "Adam does not support sparse gradients, please consider SparseAdam instead"


class _AdamStep(FusedStep):
    """The fused `step` shared by Adam and AdamW (first in their MRO)."""

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

    def _plan_group(self, group: dict, grads: list, grad_scale, found_inf) -> GroupPlan:
        cache = self._cached_group(
            group, grads, group["amsgrad"], lambda: self._build_cache(group, grads)
        )
        return [functools.partial(self._call, group, chunk, grad_scale, found_inf)
                for chunk in cache.chunks(grads)], None

    @staticmethod
    def _call(group: dict, chunk: Chunk, grad_scale, found_inf) -> None:
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        # A Tensor lr on the GPU (capturable) is read by the kernel: no host sync, so
        # the step can be captured in a CUDA graph. Elsewhere it is read here.
        lr_tensor = None
        if isinstance(lr, Tensor) and lr.device.type != "cpu":
            lr_tensor = on_device(lr, chunk.device)
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
            grad_scale=on_device(grad_scale, chunk.device),
            found_inf=on_device(found_inf, chunk.device),
        )


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
