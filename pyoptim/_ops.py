"""Typed wrappers over torch.ops.pyoptim.* and the CPU capability helpers."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from . import _C  # noqa: F401

_ops = torch.ops.pyoptim

CPU_LEVELS = ("scalar", "avx2", "avx512")


def cpu_capability() -> str:
    """The CPU kernel level in use: "scalar", "avx2" or "avx512".

    Chosen once by CPUID; the environment variable PYOPTIM_CPU_CAPABILITY caps it.
    """
    return _ops.cpu_capability.default()


def max_cpu_capability() -> str:
    """The highest CPU kernel level this CPU can run (ignoring PYOPTIM_CPU_CAPABILITY)."""
    return _ops.max_cpu_capability.default()


def available_cpu_capabilities() -> list[str]:
    """Every level this CPU can run, lowest first."""
    return list(CPU_LEVELS[: CPU_LEVELS.index(max_cpu_capability()) + 1])


@contextlib.contextmanager
def cpu_capability_override(level: str) -> Iterator[None]:
    """Test hook: run the CPU kernels at `level` inside the block."""
    previous = _ops._set_cpu_capability.default(level)
    try:
        yield
    finally:
        _ops._set_cpu_capability.default(previous)


@contextlib.contextmanager
def check_only() -> Iterator[None]:
    """Inside the block the optimizer ops of this thread only validate their arguments: they
    raise what they would raise and write nothing (Note [Check-only calls] in
    csrc/ops/checks.h). The optimizers use it to make a step of several calls all-or-nothing."""
    previous = _ops._set_check_only.default(True)
    try:
        yield
    finally:
        _ops._set_check_only.default(previous)


def adam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor],
    state_steps: Sequence[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
    lr_tensor: Optional[Tensor] = None,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One fused Adam/AdamW step over tensor lists; increments `state_steps` (see library.cpp).

    Same as torch.ops.pyoptim.adam_ (Note [Fast op calls] in csrc/python/module.cpp).
    """
    _C._call(
        "pyoptim::adam_",
        (
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            state_steps,
            lr,
            beta1,
            beta2,
            weight_decay,
            eps,
            amsgrad,
            maximize,
            decoupled,
            lr_tensor,
            grad_scale,
            found_inf,
        ),
    )


def sgd_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    lr_tensor: Optional[Tensor] = None,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """One fused SGD step over tensor lists (see library.cpp); buffers unused if momentum == 0.

    Same as torch.ops.pyoptim.sgd_ (Note [Fast op calls] in csrc/python/module.cpp).
    """
    _C._call(
        "pyoptim::sgd_",
        (
            params,
            grads,
            momentum_buffers,
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            maximize,
            is_first_step,
            lr_tensor,
            grad_scale,
            found_inf,
        ),
    )


def sgd_sparse_(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Optional[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    lr_tensor: Optional[Tensor] = None,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
) -> None:
    """Lazy SGD step of one param with a sparse COO grad (see Note [Sparse SGD], sgd_cpu.cpp)."""
    _ops.sgd_sparse_.default(
        param,
        grad,
        momentum_buffer,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
        is_first_step=is_first_step,
        lr_tensor=lr_tensor,
        grad_scale=grad_scale,
        found_inf=found_inf,
    )


def sparse_adam_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    lr_tensor: Optional[Tensor] = None,
) -> None:
    """One fused SparseAdam step; `steps` are the counts after this step (see library.cpp)."""
    _ops.sparse_adam_.default(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
        lr_tensor=lr_tensor,
    )
