"""pyoptim.SGD: torch.optim.SGD with a fused native step, and sparse gradients with momentum.

The class subclasses torch.optim.SGD, so the constructor (lr as float or Tensor, momentum,
dampening, weight_decay, nesterov, maximize, foreach, differentiable, fused), its defaults and
its error messages, param groups, hooks, LR schedulers and state_dict handling are torch's own.
Only `step` differs:

* Dense gradients: one call to `torch.ops.pyoptim.sgd_` per param group (and device), which
  validates everything, then updates every tensor in one parallel region. The math mirrors
  torch's single-tensor SGD expression by expression (see csrc/include/pyoptim/math/sgd.h);
  float32 / float64 results are torch's own bits on AVX2 / AVX-512 CPUs.
* Sparse COO gradients (`nn.Embedding(sparse=True)`, `nn.EmbeddingBag(sparse=True)`, coalesced
  or not, duplicate indices summed): one call to `torch.ops.pyoptim.sgd_sparse_` per param.
  Plain SGD (momentum=0, weight_decay=0) gives torch's exact result. Unlike torch, momentum,
  nesterov, dampening and weight decay are supported, with LAZY semantics: only the rows present
  in this step's gradient are updated. For each present row r, with g_r the sum of its
  duplicate rows::

      g_r = -g_r                                      (maximize)
      g_r = g_r + weight_decay * p_r
      b_r = g_r                                       (buffer's first step, see below)
      b_r = momentum * b_r + (1 - dampening) * g_r    (later steps)
      g_r = g_r + momentum * b_r  (nesterov)   or   g_r = b_r
      p_r = p_r - lr * g_r

  Rows absent from the gradient keep their param and momentum buffer unchanged: they are not
  decayed and their momentum does not keep moving them (a dense step would). First step: when
  the param has no momentum buffer yet, one is created as zeros and each present row gets
  b_r = g_r (torch's first-step rule, row-wise); rows first seen on a later step start from
  b_r = 0, i.e. b_r = (1 - dampening) * g_r.

State per param is torch's: `momentum_buffer` (a dense tensor like the param), only when
momentum != 0, so state_dicts load both ways between torch.optim.SGD and pyoptim.SGD. (torch
keeps a *sparse* buffer for sparse grads with momentum; one loaded from torch is densified.)

Flags: `foreach` and `fused` are accepted and validated as torch validates them; the step is
always pyoptim's fused kernel. `differentiable=True` falls back to torch's own implementation.
GradScaler: like torch's fused SGD, `step` takes `grad_scale` / `found_inf` from the scaler
(grads are divided by the scale inside the kernel; a step with inf/NaN grads changes nothing).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch import Tensor

from . import _ops
from ._state import FusedStep, GroupCache, GroupPlan, on_device

__all__ = ["SGD"]


class _SgdCache(GroupCache):
    """GroupCache plus SGD's extras: params on their momentum buffer's first step (`first`,
    stepped by a second op call with is_first_step=True) and sparse-grad params (`sparse`)."""

    def __init__(self, group: dict, state: Any, grads: list, flags: Any) -> None:
        super().__init__(group, state, grads, flags)
        self.first: Optional[GroupCache] = None
        self.first_bufs: list[tuple[Tensor, Tensor]] = []  # (param, new buffer) to store
        self.sparse: list[tuple[int, Tensor]] = []  # (position, param)


def _sparse_mask(grads: list) -> list[bool]:
    return [g is not None and g.is_sparse for g in grads]


class SGD(FusedStep, torch.optim.SGD):
    __doc__ = (
        "Drop-in torch.optim.SGD with a fused native step and lazy sparse momentum "
        "(see pyoptim.sgd).\n\n" + (torch.optim.SGD.__doc__ or "")
    )

    def _build_cache(self, group: dict, grads: list, sparse_mask: list[bool]) -> _SgdCache:
        has_momentum = group["momentum"] != 0
        cache = _SgdCache(group, self.state, grads, (has_momentum, sparse_mask))
        for i in cache.active:
            p = group["params"][i]
            if sparse_mask[i]:
                cache.sparse.append((i, p))
                continue
            if not has_momentum:  # torch does not touch the state without momentum
                cache.add(i, p, state=[])
                continue
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:  # first step: the kernel writes buf = grad
                buf = torch.empty_like(p, memory_format=torch.preserve_format)
                cache.first_bufs.append((p, buf))
                if cache.first is None:
                    cache.first = GroupCache(group, self.state, grads, None)
                cache.first.add(i, p, state=[buf])
            else:
                if buf.is_sparse:  # a torch state_dict from sparse momentum
                    buf = state["momentum_buffer"] = buf.to_dense()
                cache.add(i, p, state=[buf])
        return cache

    def _plan_group(self, group: dict, grads: list, grad_scale, found_inf) -> GroupPlan:
        sparse_mask = _sparse_mask(grads)
        cache = self._cached_group(
            group,
            grads,
            (group["momentum"] != 0, sparse_mask),
            lambda: self._build_cache(group, grads, sparse_mask),
        )
        kw = dict(
            lr=float(group["lr"]),
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            weight_decay=float(group["weight_decay"]),
            nesterov=bool(group["nesterov"]),
            maximize=bool(group["maximize"]),
        )
        has_momentum = group["momentum"] != 0
        calls = []
        new_bufs: list[tuple[Tensor, Tensor]] = []  # (param, buffer) stored by the commit
        for i, p in cache.sparse:
            buf, first = None, False
            if has_momentum:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is not None and buf.is_sparse:
                    buf = state["momentum_buffer"] = buf.to_dense()
                if buf is None:
                    buf, first = torch.zeros_like(p), True
                    new_bufs.append((p, buf))
            calls.append(functools.partial(
                _ops.sgd_sparse_,
                p,
                grads[i],
                buf,
                is_first_step=first,
                grad_scale=on_device(grad_scale, p.device),
                found_inf=on_device(found_inf, p.device),
                **kw,
            ))
        for chunk in cache.chunks(grads):
            if chunk.params:
                calls.append(functools.partial(
                    _ops.sgd_,
                    chunk.params,
                    chunk.grads,
                    chunk.state[0] if has_momentum else [],
                    is_first_step=False,
                    grad_scale=on_device(grad_scale, chunk.device),
                    found_inf=on_device(found_inf, chunk.device),
                    **kw,
                ))
        if cache.first is not None:
            for chunk in cache.first.chunks(grads):
                calls.append(functools.partial(
                    _ops.sgd_,
                    chunk.params,
                    chunk.grads,
                    chunk.state[0],
                    is_first_step=True,
                    grad_scale=on_device(grad_scale, chunk.device),
                    found_inf=on_device(found_inf, chunk.device),
                    **kw,
                ))
        if not new_bufs and not cache.first_bufs:
            return calls, None

        def commit() -> None:
            # new buffers become state once written (not when GradScaler skipped the step)
            if found_inf is not None and bool(found_inf.item()):
                return
            for p, buf in new_bufs + cache.first_bufs:
                self.state[p]["momentum_buffer"] = buf
            if cache.first_bufs:
                self._pyoptim_caches.pop(id(group), None)  # rebuild without first steps

        return calls, commit
