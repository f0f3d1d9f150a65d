"""SGD workloads: pyoptim vs torch.optim.SGD's for-loop, foreach and fused steps.

Dense SGD with momentum (lr=1e-3, momentum=0.9; the buffers exist after warm-up):
  fp32-1x64M          one float32 tensor of 64M elements (pure streaming, 20 B/elem)
  bf16-1x64M          one bfloat16 tensor of 64M elements
  fp32-transformer    the Adam workloads' 16-layer transformer parameter list
  fp32-1000x1k        1000 float32 tensors of 1024 elements (per-tensor overhead)
Sparse SGD (sgd-sparse/...) on a 1M x 128 float32 embedding with 65,536 lookups a step (one
uncoalesced COO grad, as nn.Embedding(sparse=True) gives), uniform and Zipf (s = 1.25, about
10k unique rows). torch supports only plain SGD there (its fused SGD rejects sparse grads and
foreach falls back to the loop), so the baseline is `torch-forloop`; `pyoptim-momentum` is
pyoptim's lazy sparse momentum (momentum=0.9) on the same grads, for information.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Dict, List

import torch

import pyoptim

from .bytes import itemsize, sgd_bytes_per_elem
from .harness import BenchConfig, SetupFn, Workload
from .workloads_adam import IMPLS, _fmt, _shared_data, transformer_shapes

M = 2**20


def _pyoptim_has(device: str, op: str) -> bool:
    key = "CPU" if device == "cpu" else "CUDA"
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pyoptim::{op}", key)


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


def _sparse_data(rows: int, width: int, lookups: int, zipf: bool, device: str):
    cache: Dict[str, tuple] = {}

    def get():
        if "d" not in cache:
            gen = torch.Generator(device="cpu").manual_seed(0)
            if zipf:  # inverse-CDF sampling of a continuous power law, s = 1.25
                s = 1.25
                u = torch.rand(lookups, generator=gen, dtype=torch.float64)
                idx = ((rows ** (1 - s) - 1) * u + 1) ** (1 / (1 - s))
                idx = (idx.long() - 1).clamp_(0, rows - 1)
            else:
                idx = torch.randint(0, rows, (lookups,), generator=gen)
            weight = torch.randn(rows, width, generator=gen)
            vals = torch.randn(lookups, width, generator=gen) * 1e-2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grad = torch.sparse_coo_tensor(idx[None], vals, (rows, width))
            cache["d"] = ([weight.to(device)], [grad.to(device)])
            cache["unique"] = int(idx.unique().numel())
        return cache["d"]

    def unique_rows() -> int:
        get()
        return cache["unique"]

    get.cleanup = cache.clear
    get.unique_rows = unique_rows
    return get


def workloads(cfg: BenchConfig) -> List[Workload]:
    dev = cfg.device
    big = cfg.n(64 * M, minimum=1024)
    s = math.sqrt(cfg.scale)
    d = max(16, int(round(320 * s / 16)) * 16)
    tshapes = transformer_shapes(d, layers=16, vocab=max(64, int(16000 * s)), ctx=512)
    small = cfg.n(1024, minimum=16)
    cases = [
        (f"fp32-1x{_fmt(big)}", [(big,)], torch.float32, {"%probe": 95.0, "torch-fused": 1.0}),
        (f"bf16-1x{_fmt(big)}", [(big,)], torch.bfloat16, {"torch-fused": 1.0}),
        (f"fp32-transformer-{len(tshapes)}t", tshapes, torch.float32, {"%probe": 95.0}),
        (f"fp32-1000x{_fmt(small)}", [(small,)] * 1000, torch.float32, {"torch-fused": 3.0}),
    ]
    kw = dict(lr=1e-3, momentum=0.9)
    out: List[Workload] = []
    for what, shapes, dtype, targets in cases:
        numel = sum(math.prod(sh) for sh in shapes)
        data = _shared_data(shapes, dtype, dev)
        impls: Dict[str, SetupFn] = {
            name: _make_setup(torch.optim.SGD, dict(kw, **extra), data)
            for name, extra in IMPLS.items()
        }
        if _pyoptim_has(dev, "sgd_"):
            impls["pyoptim"] = _make_setup(pyoptim.SGD, kw, data)
        out.append(
            Workload(
                name=f"sgd/{what}",
                group="sgd",
                numel=numel,
                n_tensors=len(shapes),
                bytes_per_step=sgd_bytes_per_elem(dtype, momentum=True) * numel,
                impls=impls,
                baseline="pyoptim" if "pyoptim" in impls else "torch-fused",
                description=f"SGD momentum=0.9, {dtype}, {len(shapes)} tensors",
                targets=targets,
                cleanup=data.cleanup,
            )
        )

    rows, width, lookups = cfg.n(M, minimum=64), 128, cfg.n(65536, minimum=64)
    if dev == "cpu" and _pyoptim_has(dev, "sgd_"):
        for dist in ("uniform", "zipf"):
            data = _sparse_data(rows, width, lookups, dist == "zipf", dev)
            impls = {
                "torch-forloop": _make_setup(torch.optim.SGD, dict(lr=1e-3, foreach=False), data),
                "pyoptim": _make_setup(pyoptim.SGD, dict(lr=1e-3), data),
                "pyoptim-momentum": _make_setup(pyoptim.SGD, dict(lr=1e-3, momentum=0.9), data),
            }
            e = itemsize(torch.float32)
            # minimum traffic of one pass: the value rows and indices once, each touched
            # param row read and written once (unique rows: estimated for the byte count)
            est_unique = min(rows, lookups) if dist == "uniform" else min(rows, lookups // 6)
            nbytes = lookups * (width * e + 8) + 2 * est_unique * width * e
            out.append(
                Workload(
                    name=f"sgd-sparse/fp32-{_fmt(rows)}x{width}-{_fmt(lookups)}-{dist}",
                    group="sgd",
                    numel=lookups * width,
                    n_tensors=1,
                    bytes_per_step=nbytes,
                    impls=impls,
                    baseline="pyoptim",
                    description=(
                        f"sparse SGD (plain), float32 {rows}x{width} embedding, {lookups} "
                        f"{dist} lookups per step, uncoalesced COO grad"
                    ),
                    targets={"torch-forloop": 3.0},
                    cleanup=data.cleanup,
                )
            )
    return out
