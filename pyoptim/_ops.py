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
    """One fused Adam/AdamW step over tensor lists; increments `state_steps` (see library.cpp)."""
    _ops.adam_.default(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
        decoupled=decoupled,
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
