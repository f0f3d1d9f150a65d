"""The CPU capability helpers. The optimizers call their ops as torch.ops.pyoptim.* (schemas:
csrc/ops/library.cpp)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from . import _C  # noqa: F401  (registers torch.ops.pyoptim.*)

_ops = torch.ops.pyoptim

# This build's CPU kernel levels, lowest first: ("scalar", "avx2", "avx512") on x86-64,
# ("scalar", "neon") on AArch64, ("scalar",) elsewhere (setup.py builds the target's levels).
CPU_LEVELS = tuple(_ops.cpu_levels.default())


def cpu_capability() -> str:
    """The CPU kernel level in use: one of CPU_LEVELS ("scalar", "avx2", "avx512" on x86-64;
    "scalar", "neon" on AArch64).

    Chosen once from the CPU's features; the environment variable PYOPTIM_CPU_CAPABILITY caps it.
    """
    return _ops.cpu_capability.default()


def max_cpu_capability() -> str:
    """The highest CPU kernel level this CPU can run (ignoring PYOPTIM_CPU_CAPABILITY)."""
    return _ops.max_cpu_capability.default()


def available_cpu_capabilities() -> list[str]:
    """Every level this CPU can run, lowest first."""
    return list(CPU_LEVELS[: CPU_LEVELS.index(max_cpu_capability()) + 1])


def kernel_table_isa() -> str:
    """The level whose kernel table the CPU ops call right now (a test hook: each ISA library
    fills in its own level, so this tells which code runs, not which level was asked for)."""
    return _ops._kernel_table_isa.default()


@contextlib.contextmanager
def cpu_capability_override(level: str) -> Iterator[None]:
    """Test hook: run the CPU kernels at `level` inside the block."""
    previous = _ops._set_cpu_capability.default(level)
    try:
        yield
    finally:
        _ops._set_cpu_capability.default(previous)
