"""Dense optimizers (Note [Dense optimizers] in csrc/include/pyoptim/dense.h): pyoptim vs
torch.optim's for-loop and foreach steps, and its fused step where the torch class has a
`fused` flag (Adagrad), one row per optimizer and shape. Adding a dense optimizer adds one line
to DENSE.

CPU (torch-forloop, torch-foreach, [torch-fused,] pyoptim):
  <name>/fp32-1x64M        one float32 tensor of 64M elements (pure streaming)
  <name>/fp32-1000x1k      1000 float32 tensors of 1024 elements (per-tensor overhead)
CUDA (torch-foreach, [torch-fused,] pyoptim): the first and the last of workloads_adam's CUDA
shapes
  <name>/fp32-1x256M       one float32 tensor of 256M elements (bandwidth-bound)
  <name>/fp32-10000-tiny   10,000 float32 tensors of 1..1024 elements (launch- and host-bound)
"""

from __future__ import annotations

import inspect
import math

import torch

import pyoptim

from .bytes import dense_bytes_per_elem
from .harness import BenchConfig, SetupFn, Workload
from .workloads_adam import M, _fmt, _make_setup, _shared_data, tiny_shapes

# (bench name, torch class, pyoptim class, state tensors per param, constructor kwargs)
DENSE = [
    ("adamax", torch.optim.Adamax, pyoptim.Adamax, 2, dict(lr=2e-3)),
    ("adagrad", torch.optim.Adagrad, pyoptim.Adagrad, 1, dict(lr=1e-2)),
]


def _cases(cfg: BenchConfig) -> dict[str, tuple[list[tuple[int, ...]], dict[str, float]]]:
    """name -> (shapes, targets)."""
    if cfg.device == "cuda":
        big = cfg.n(256 * M, minimum=1024)
        n_tiny = cfg.n(10000, minimum=16)
        return {f"fp32-1x{_fmt(big)}": ([(big,)], {}),
                f"fp32-{n_tiny}-tiny": (tiny_shapes(n_tiny), {})}
    big = cfg.n(64 * M, minimum=1024)
    small = cfg.n(1024, minimum=16)
    return {f"fp32-1x{_fmt(big)}": ([(big,)], {"%probe": 95.0}),
            f"fp32-1000x{_fmt(small)}": ([(small,)] * 1000, {"torch-foreach": 3.0})}


def workloads(cfg: BenchConfig) -> list[Workload]:
    cuda = cfg.device == "cuda"
    out = []
    for name, torch_cls, py_cls, states, kw in DENSE:
        for what, (shapes, targets) in _cases(cfg).items():
            numel = sum(math.prod(s) for s in shapes)
            data = _shared_data(shapes, torch.float32, cfg.device)
            impls: dict[str, SetupFn] = {} if cuda else {
                "torch-forloop": _make_setup(torch_cls, dict(kw, foreach=False), data)}
            impls["torch-foreach"] = _make_setup(torch_cls, dict(kw, foreach=True), data)
            if "fused" in inspect.signature(torch_cls).parameters:
                impls["torch-fused"] = _make_setup(torch_cls, dict(kw, fused=True), data)
            impls["pyoptim"] = _make_setup(py_cls, kw, data)
            out.append(Workload(
                name=f"{name}/{what}",
                group=name,
                numel=numel,
                n_tensors=len(shapes),
                bytes_per_step=dense_bytes_per_elem(torch.float32, states) * numel,
                impls=impls,
                baseline="pyoptim",
                description=f"{torch_cls.__name__}, float32, {len(shapes)} tensors",
                targets=targets,
                cleanup=data.cleanup,
            ))
    return out
