"""SGD workloads: pyoptim vs torch.optim.SGD's for-loop, foreach and fused steps.

Dense SGD with momentum (lr=1e-3, momentum=0.9; the buffers exist after warm-up):
  CPU (torch-forloop, torch-foreach, torch-fused, pyoptim)
    fp32-1x64M          one float32 tensor of 64M elements (pure streaming, 20 B/elem)
    bf16-1x64M          one bfloat16 tensor of 64M elements
    fp32-transformer    the Adam workloads' 16-layer transformer parameter list (196 tensors)
    fp32-1000x1k        1000 float32 tensors of 1024 elements (per-tensor overhead)
  CUDA (torch-foreach, torch-fused, pyoptim): the Adam workloads' CUDA shapes
    fp32-1x256M, fp32-transformer-194t, fp32-10000-tiny

Sparse SGD (sgd-sparse/...) on a float32 embedding of width 128, one uncoalesced COO grad a
step (as nn.Embedding(sparse=True) gives), uniform and Zipf (s = 1.25) lookups:
  CPU    1M x 128 (binary M), 65,536 lookups
  CUDA   10M x 128 (decimal), 1M lookups
torch supports only plain SGD there (its fused SGD rejects sparse grads and foreach falls back
to the loop), so the torch impl is `torch-forloop`; `pyoptim-momentum` is pyoptim's lazy sparse
momentum (momentum=0.9) on the same grads, for information; `row-probe` (CPU) the ceiling of the
access pattern with 1 table (workloads_sparse_adam.row_probe). Bytes per step:
bench/bytes.py:sparse_sgd_bytes (plain SGD), from the exact unique-row count of the workload's
index tensor.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

import pyoptim

from .bytes import sgd_bytes_per_elem, sparse_sgd_bytes
from .harness import BenchConfig, SetupFn, Workload
from .workloads_adam import (
    CUDA_TORCH_IMPLS,
    IMPLS,
    _fmt,
    _fmt_dec,
    _shared_data,
    cuda_cases,
    transformer_shapes,
)
from .workloads_sparse_adam import has_row_probe, row_probe

M = 2**20
WIDTH = 128
ZIPF_S = 1.25


def _make_setup(opt_cls: Callable, kwargs: dict, data: Callable) -> SetupFn:
    def setup():
        params = []
        for base, g in zip(*data()):
            p = base.clone()  # each impl updates its own copy of the same initial values
            p.grad = g  # shared, read-only: no impl writes grads
            params.append(p)
        opt = opt_cls(params, **kwargs)
        return opt.step

    return setup


def sparse_indices(rows: int, lookups: int, zipf: bool) -> torch.Tensor:
    """The row ids of one step's lookups (int64, on the CPU), the same on every run."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    if not zipf:
        return torch.randint(0, rows, (lookups,), generator=gen)
    # inverse-CDF sampling of a continuous power law, s = ZIPF_S
    u = torch.rand(lookups, generator=gen, dtype=torch.float64)
    idx = ((rows ** (1 - ZIPF_S) - 1) * u + 1) ** (1 / (1 - ZIPF_S))
    return (idx.long() - 1).clamp_(0, rows - 1)


def _sparse_data(rows: int, idx: torch.Tensor, device: str):
    """The table and its uncoalesced COO grad over `idx`, made on first use, on the device."""
    cache: dict[str, tuple] = {}

    def get():
        if "d" not in cache:
            gen = torch.Generator(device=device).manual_seed(1)
            weight = torch.randn(rows, WIDTH, generator=gen, device=device)
            vals = torch.randn(idx.numel(), WIDTH, generator=gen, device=device) * 1e-2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grad = torch.sparse_coo_tensor(idx.to(device)[None], vals, (rows, WIDTH))
            cache["d"] = ([weight], [grad])
        return cache["d"]

    get.cleanup = cache.clear
    return get


def _cpu_cases(cfg: BenchConfig) -> list[tuple]:
    big = cfg.n(64 * M, minimum=1024)
    s = math.sqrt(cfg.scale)
    d = max(16, int(round(320 * s / 16)) * 16)
    tshapes = transformer_shapes(d, layers=16, vocab=max(64, int(16000 * s)), ctx=512)
    small = cfg.n(1024, minimum=16)
    return [
        (f"fp32-1x{_fmt(big)}", [(big,)], torch.float32, {"%probe": 95.0, "torch-fused": 1.0}),
        (f"bf16-1x{_fmt(big)}", [(big,)], torch.bfloat16, {"torch-fused": 1.0}),
        (f"fp32-transformer-{len(tshapes)}t", tshapes, torch.float32, {"%probe": 95.0}),
        (f"fp32-1000x{_fmt(small)}", [(small,)] * 1000, torch.float32, {"torch-fused": 3.0}),
    ]


def workloads(cfg: BenchConfig) -> list[Workload]:
    dev = cfg.device
    cuda = dev == "cuda"
    kw = dict(lr=1e-3, momentum=0.9)
    out: list[Workload] = []
    for what, shapes, dtype, targets in cuda_cases(cfg) if cuda else _cpu_cases(cfg):
        numel = sum(math.prod(sh) for sh in shapes)
        data = _shared_data(shapes, dtype, dev)
        impls: dict[str, SetupFn] = {
            name: _make_setup(torch.optim.SGD, dict(kw, **extra), data)
            for name, extra in (CUDA_TORCH_IMPLS if cuda else IMPLS).items()
        }
        impls["pyoptim"] = _make_setup(pyoptim.SGD, kw, data)
        out.append(
            Workload(
                name=f"sgd/{what}",
                group="sgd",
                numel=numel,
                n_tensors=len(shapes),
                bytes_per_step=sgd_bytes_per_elem(dtype, momentum=True) * numel,
                impls=impls,
                baseline="pyoptim",
                description=f"SGD momentum=0.9, {dtype}, {len(shapes)} tensors",
                targets=targets,
                cleanup=data.cleanup,
            )
        )

    if cuda:
        rows, lookups = cfg.n(10_000_000, minimum=64), cfg.n(10**6, minimum=64)
        size = f"{_fmt_dec(rows)}x{WIDTH}-{_fmt_dec(lookups)}"
    else:
        rows, lookups = cfg.n(M, minimum=64), cfg.n(65536, minimum=64)
        size = f"{_fmt(rows)}x{WIDTH}-{_fmt(lookups)}"
    for dist in ("uniform", "zipf"):
        idx = sparse_indices(rows, lookups, dist == "zipf")
        unique = int(idx.unique().numel())
        data = _sparse_data(rows, idx, dev)
        impls = {
            "torch-forloop": _make_setup(torch.optim.SGD, dict(lr=1e-3, foreach=False), data),
            "pyoptim": _make_setup(pyoptim.SGD, dict(lr=1e-3), data),
            "pyoptim-momentum": _make_setup(pyoptim.SGD, dict(lr=1e-3, momentum=0.9), data),
        }
        if has_row_probe(dev):
            impls["row-probe"] = row_probe(lambda d=data: d()[1][0], 1)
        out.append(
            Workload(
                name=f"sgd-sparse/fp32-{size}-{dist}",
                group="sgd",
                numel=unique * WIDTH,
                n_tensors=1,
                bytes_per_step=sparse_sgd_bytes(unique, lookups, WIDTH, torch.float32),
                impls=impls,
                baseline="pyoptim",
                description=(
                    f"sparse SGD (plain), float32 {rows}x{WIDTH} embedding, {lookups} "
                    f"{dist} lookups per step ({unique} unique rows), uncoalesced COO grad"
                ),
                targets={} if cuda else {"torch-forloop": 3.0},
                cleanup=data.cleanup,
            )
        )
    return out
