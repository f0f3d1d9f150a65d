"""Calls of the optimizer ops for ONE param group, with scalar hyper-parameters.

The ops take the hyper-parameters of every param group packed into two lists, `hyper` and
`flags` (Note [Param groups in one call] in csrc/ops/groups.h); most op-level tests exercise one
group, so these helpers turn scalar keyword arguments into one group's lists and call
torch.ops.pyoptim.* directly. Tests of several
groups call the ops themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import pyoptim  # noqa: F401  (registers torch.ops.pyoptim.*)

ops = torch.ops.pyoptim


def adam_(params: Sequence[Tensor], grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
          *, lr: float, beta1: float, beta2: float, weight_decay: float, eps: float,
          amsgrad: bool, maximize: bool, decoupled: bool, lr_tensor: Tensor | None = None,
          grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
          validate_only: bool = False, master_params: Sequence[Tensor] | None = None,
          sr_seeds: Sequence[Tensor] | None = None, states: str | None = None,
          exp_avg_scales: Sequence[Tensor] | None = None,
          exp_avg_sq_scales: Sequence[Tensor] | None = None,
          kahan_comps: Sequence[Tensor] | None = None) -> None:
    """master_params given: the group has master_weights; sr_seeds given: stochastic_rounding,
    or with `states` ("bfloat16" or "8bit", with the scales) reduced-precision states;
    kahan_comps given: kahan."""
    ops.adam_.default(
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
        group_sizes=[len(params)], hyper=[lr, beta1, beta2, weight_decay, eps],
        flags=[amsgrad, maximize, decoupled, master_params is not None,
               sr_seeds is not None and states is None, states == "bfloat16", states == "8bit",
               kahan_comps is not None],
        lr_tensors=[lr_tensor] if lr_tensor is not None else [],
        grad_scale=grad_scale, found_inf=found_inf, validate_only=validate_only,
        master_params=master_params or [], sr_seeds=sr_seeds or [],
        exp_avg_scales=exp_avg_scales or [], exp_avg_sq_scales=exp_avg_sq_scales or [],
        kahan_comps=kahan_comps or [])


def sgd_(params: Sequence[Tensor], grads, momentum_buffers, *, lr: float, momentum: float,
         dampening: float, weight_decay: float, nesterov: bool, maximize: bool,
         is_first_step: bool, lr_tensor: Tensor | None = None,
         grad_scale: Tensor | None = None, found_inf: Tensor | None = None,
         validate_only: bool = False, master_params: Sequence[Tensor] | None = None,
         sr_seeds: Sequence[Tensor] | None = None, states: str | None = None,
         buffer_scales: Sequence[Tensor] | None = None,
         kahan_comps: Sequence[Tensor] | None = None) -> None:
    """Dense or sparse grads alike; momentum_buffers: one per param when momentum != 0;
    master_params given: the group has master_weights; sr_seeds given: stochastic_rounding, or
    with `states` ("bfloat16" or "8bit", with buffer_scales) reduced-precision buffers;
    kahan_comps given: kahan."""
    ops.sgd_.default(
        params, grads, momentum_buffers, group_sizes=[len(params)],
        hyper=[lr, momentum, dampening, weight_decay],
        flags=[nesterov, maximize, master_params is not None,
               sr_seeds is not None and states is None, states == "bfloat16", states == "8bit",
               kahan_comps is not None],
        first_step=[True] * len(momentum_buffers) if is_first_step else [],
        lr_tensors=[lr_tensor] if lr_tensor is not None else [], grad_scale=grad_scale,
        found_inf=found_inf, validate_only=validate_only, master_params=master_params,
        sr_seeds=sr_seeds, buffer_scales=buffer_scales, kahan_comps=kahan_comps)


def sgd_sparse_(param: Tensor, grad: Tensor, momentum_buffer: Tensor | None, **kw) -> None:
    """One param with a (sparse) grad; the buffer is passed only with momentum."""
    sgd_([param], [grad], [momentum_buffer] if kw["momentum"] != 0 else [], **kw)


def sparse_adam_(params: Sequence[Tensor], grads, exp_avgs, exp_avg_sqs, steps, *, lr: float,
                 beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
                 maximize: bool = False, lr_tensor: Tensor | None = None,
                 validate_only: bool = False) -> None:
    ops.sparse_adam_.default(
        params, grads, exp_avgs, exp_avg_sqs, steps, group_sizes=[len(params)],
        hyper=[lr, beta1, beta2, eps, weight_decay], flags=[maximize],
        lr_tensors=[lr_tensor] if lr_tensor is not None else [],
        validate_only=validate_only)


# ---- hyper-parameters of the mixed-precision tests (test_master, test_state_dtype,
# test_sgd_modes and their CUDA twins) ----------------------------------------------------------

def adam_hp(**kw) -> dict:
    """adam_'s keyword arguments for one group: AdamW's defaults at lr 1e-2, `kw` on top."""
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False,
              maximize=False, decoupled=True)
    hp.update(kw)
    return hp


# sgd_'s keyword arguments for one group with momentum, by name
SGD_MOMENTUM_FLAGS = {
    "momentum": dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                     maximize=False),
    "nesterov-wd": dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
                        maximize=False),
    "dampening-maximize": dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1,
                               nesterov=False, maximize=True),
}
# and without momentum (Kahan takes both)
SGD_PLAIN_FLAGS = {
    "plain": dict(lr=0.05, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                  maximize=False),
    "plain-wd-maximize": dict(lr=0.05, momentum=0.0, dampening=0.0, weight_decay=0.1,
                              nesterov=False, maximize=True),
}
