"""SparseAdam workloads: an embedding table trained through nn.Embedding(sparse=True).

One float32 table of 1M x 128 (cfg-scaled), 65,536 lookups per step, two index distributions:
  uniform   65,536 uniform row ids: ~63k unique rows, few duplicates
  zipf      Zipf-distributed row ids (s = 1.2, hot ids scattered over the table by a fixed
            permutation): ~10.5k unique rows, heavy duplicates

The gradient is made once per workload by a real forward/backward through
nn.Embedding(sparse=True) (uncoalesced, as every step sees it) and shared by the impls; only
optimizer.step() is timed. Impls:
  pyoptim             pyoptim.SparseAdam
  torch-sparseadam    torch.optim.SparseAdam
  torch-fused-dense   torch.optim.Adam(fused=True) over the whole table with the dense gradient
                      (what sparse training avoids: every row is read and written)

Bytes per step (bench/bytes.py:sparse_adam_bytes) count the unique rows' param, exp_avg and
exp_avg_sq read and written once, every value row of the gradient read once (nnz x width, not
unique x width: duplicates must all be read), and the indices.
"""

from __future__ import annotations

from typing import Dict, List

import torch

import pyoptim

from .harness import BenchConfig, SetupFn, Workload

LOOKUPS = 65536
ZIPF_S = 1.2


def _indices(kind: str, n_rows: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if kind == "uniform":
        return torch.randint(0, n_rows, (n,), generator=gen)
    ranks = torch.arange(1, n_rows + 1, dtype=torch.float64)
    ids = torch.multinomial(ranks.pow(-ZIPF_S), n, replacement=True, generator=gen)
    return torch.randperm(n_rows, generator=gen)[ids]  # hot ids anywhere in the table


def _shared(n_rows: int, width: int, idx: torch.Tensor):
    cache: Dict[str, object] = {}
    n = idx.numel()

    def get():
        if "grad" not in cache:
            emb = torch.nn.Embedding(n_rows, width, sparse=True)
            gen = torch.Generator().manual_seed(1)
            target = torch.randn(n, width, generator=gen)
            (emb(idx) * target).sum().backward()
            cache["grad"] = emb.weight.grad  # uncoalesced COO, nnz = n
            cache["weight"] = emb.weight.detach()
        return cache

    get.cleanup = cache.clear
    return get


def _setup(kind: str, shared) -> SetupFn:
    def setup():
        c = shared()
        p = torch.nn.Parameter(c["weight"].clone())
        if kind == "pyoptim":
            p.grad = c["grad"]
            opt = pyoptim.SparseAdam([p], lr=1e-3)
        elif kind == "torch-sparseadam":
            p.grad = c["grad"]
            opt = torch.optim.SparseAdam([p], lr=1e-3)
        else:
            p.grad = c["grad"].to_dense()
            opt = torch.optim.Adam([p], lr=1e-3, fused=True)
        return opt.step

    return setup


def workloads(cfg: BenchConfig) -> List[Workload]:
    if cfg.device != "cpu":
        return []
    n_rows = cfg.n(2**20, minimum=1024)
    width = 128
    n = cfg.n(LOOKUPS, minimum=256)
    out = []
    for dist, targets in (("uniform", {"torch-sparseadam": 15.0}),
                          ("zipf", {"torch-sparseadam": 15.0})):
        idx = _indices(dist, n_rows, n)
        unique = int(idx.unique().numel())
        shared = _shared(n_rows, width, idx)
        impls = {name: _setup(name, shared) for name in
                 ("pyoptim", "torch-sparseadam", "torch-fused-dense")}
        out.append(
            Workload(
                name=f"sparse_adam/fp32-{n_rows // 1024}kx{width}-{n}-{dist}",
                group="sparse_adam",
                numel=unique * width,
                n_tensors=1,
                bytes_per_step=_bytes(unique, n, width),
                impls=impls,
                baseline="pyoptim",
                description=(f"SparseAdam, float32 {n_rows}x{width} table, {n} lookups "
                             f"({dist}, {unique} unique rows)"),
                targets=targets,
                cleanup=shared.cleanup,
            )
        )
    return out


def _bytes(unique: int, nnz: int, width: int) -> int:
    # unique rows: read + write p, m, v; every value row read once; the indices read
    return 6 * 4 * unique * width + 4 * nnz * width + 8 * nnz
