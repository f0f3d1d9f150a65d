"""SparseAdam workloads: an embedding table trained through nn.Embedding(sparse=True).

One float32 table of width 128, two index distributions (sizes scaled by cfg):
  CPU    1M x 128 table (1024k), 65,536 lookups per step, Zipf exponent 1.2
  CUDA   10M x 128 table, 1M lookups per step, Zipf exponent 1.1
  uniform   uniform row ids: few duplicates (CPU ~63k unique rows, CUDA ~950k)
  zipf      Zipf-distributed row ids (hot ids scattered over the table by a fixed
            permutation): heavy duplicates, the hottest row holds a large share of the lookups
The description line of each workload gives its exact number of unique rows.

The gradient is made once per workload by a real forward/backward through
nn.Embedding(sparse=True) on the device (uncoalesced, as every step sees it) and shared by the
impls; only optimizer.step() is timed. Impls:
  pyoptim             pyoptim.SparseAdam
  torch-sparseadam    torch.optim.SparseAdam
  torch-fused-dense   (CPU only) torch.optim.Adam(fused=True) over the whole table with the dense
                      gradient: what sparse training avoids, every row read and written. Left
                      out on CUDA, where its dense gradient and state would add 20 GB to the
                      run's ~36 GB.
  row-probe           (CPU only) not an optimizer: the same bytes moved by the simplest loop
                      (row_probe below), the ceiling of this access pattern on this machine.

Bytes per step: bench/bytes.py:sparse_adam_bytes, from the exact unique-row count of the
workload's index tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import pyoptim

from .bytes import sparse_adam_bytes
from .harness import BenchConfig, SetupFn, Workload, has_kernel
from .workloads_adam import _fmt_dec

WIDTH = 128
# device -> (table rows, lookups per step, Zipf exponent), before cfg scaling
SIZES = {"cpu": (2**20, 65536, 1.2), "cuda": (10_000_000, 1_000_000, 1.1)}


def zipf_indices(n_rows: int, n: int, s: float, gen: torch.Generator) -> torch.Tensor:
    """`n` row ids drawn with P(rank k) ~ k^-s, the ranks scattered over the table."""
    ranks = torch.arange(1, n_rows + 1, dtype=torch.float64)
    ids = torch.multinomial(ranks.pow(-s), n, replacement=True, generator=gen)
    return torch.randperm(n_rows, generator=gen)[ids]  # hot ids anywhere in the table


def _indices(kind: str, n_rows: int, n: int, zipf_s: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if kind == "uniform":
        return torch.randint(0, n_rows, (n,), generator=gen)
    return zipf_indices(n_rows, n, zipf_s, gen)


def _shared(n_rows: int, width: int, idx: torch.Tensor, device: str):
    cache: dict[str, object] = {}
    n = idx.numel()

    def get():
        if "grad" not in cache:
            emb = torch.nn.Embedding(n_rows, width, sparse=True, device=device)
            gen = torch.Generator().manual_seed(1)
            target = torch.randn(n, width, generator=gen).to(device)
            (emb(idx.to(device)) * target).sum().backward()
            cache["grad"] = emb.weight.grad  # uncoalesced COO, nnz = n
            cache["weight"] = emb.weight.detach()
        return cache

    get.cleanup = cache.clear
    return get


def row_probe(grad: Callable[[], torch.Tensor], n_tables: int) -> SetupFn:
    """The `row-probe` impl of a sparse workload: torch.ops.pyoptim._row_probe_ (bench/README.md,
    "Row probe") on `n_tables` fresh float32 tables shaped as the param, with the workload's
    gradient `grad()` sorted by row once at set-up: each step reads every value row once, in
    memory order, and reads and writes each touched row of each table once (the bytes the
    workload counts, but for row-wise Adagrad's 8 bytes per row), with no optimizer math."""

    def setup():
        g = grad()
        idx, values = g._indices()[0], g._values()
        rows, order = idx.sort(stable=True)
        sorted_values = values[order].contiguous()
        tables = [torch.ones(g.shape) for _ in range(n_tables)]  # touched: no page faults
        args = (*tables, *([None] * (3 - n_tables)), sorted_values, rows.contiguous())
        op = torch.ops.pyoptim._row_probe_.default
        return lambda: op(*args)

    return setup


def has_row_probe(device: str) -> bool:
    return device == "cpu" and has_kernel("_row_probe_", device)


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


def workloads(cfg: BenchConfig) -> list[Workload]:
    if cfg.device not in SIZES:
        return []
    cuda = cfg.device == "cuda"
    rows, lookups, zipf_s = SIZES[cfg.device]
    n_rows = cfg.n(rows, minimum=1024)
    n = cfg.n(lookups, minimum=256)
    size = f"{_fmt_dec(n_rows)}x{WIDTH}-{_fmt_dec(n)}" if cuda else f"{n_rows // 1024}kx{WIDTH}-{n}"
    kinds = ("pyoptim", "torch-sparseadam") + (() if cuda else ("torch-fused-dense",))
    probe = has_row_probe(cfg.device)
    targets = {} if cuda else {"torch-sparseadam": 15.0}
    out = []
    for dist in ("uniform", "zipf"):
        idx = _indices(dist, n_rows, n, zipf_s)
        unique = int(idx.unique().numel())
        shared = _shared(n_rows, WIDTH, idx, cfg.device)
        what = dist if dist == "uniform" else f"Zipf({zipf_s:g})"
        out.append(
            Workload(
                name=f"sparse_adam/fp32-{size}-{dist}",
                group="sparse_adam",
                numel=unique * WIDTH,
                n_tensors=1,
                bytes_per_step=sparse_adam_bytes(unique, n, WIDTH, torch.float32),
                impls={kind: _setup(kind, shared) for kind in kinds}
                | ({"row-probe": row_probe(lambda c=shared: c()["grad"], 3)} if probe else {}),
                baseline="pyoptim",
                description=(f"SparseAdam, float32 {n_rows}x{WIDTH} table, {n} lookups "
                             f"({what}, {unique} unique rows)"),
                targets=targets,
                cleanup=shared.cleanup,
            )
        )
    return out
