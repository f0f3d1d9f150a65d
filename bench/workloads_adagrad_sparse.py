"""Adagrad with sparse grads and RowWiseAdagrad: the SparseAdam workloads' embedding table.

The same float32 table and lookups as workloads_sparse_adam.py (CPU: 1M x 128, 65,536 lookups,
uniform and Zipf(1.2); CUDA: 10M x 128, 1M lookups, uniform and Zipf(1.1)), the same gradient
made once per workload by a forward/backward through nn.Embedding(sparse=True) (uncoalesced);
only optimizer.step() is timed. Impls:
  adagrad-sparse/
    pyoptim             pyoptim.Adagrad (sparse_adagrad_)
    torch-adagrad       torch.optim.Adagrad, its sparse branch (coalesce, sparse_mask)
  rowwise_adagrad/
    pyoptim             pyoptim.RowWiseAdagrad (rowwise_adagrad_)
    torch-ops           the same update written with torch ops (coalesce, a row mean,
                        index_add_): what row-wise Adagrad costs without a kernel of its own
                        (torch.optim has none)

Bytes per step: bench/bytes.py:sparse_adagrad_bytes / rowwise_adagrad_bytes, from the exact
unique-row count of the workload's index tensor.
"""

from __future__ import annotations

import torch

import pyoptim

from .bytes import rowwise_adagrad_bytes, sparse_adagrad_bytes
from .harness import BenchConfig, SetupFn, Workload
from .workloads_adam import _fmt_dec
from .workloads_sparse_adam import SIZES, WIDTH, _indices, _shared, has_row_probe, row_probe

LR, EPS = 1e-2, 1e-10


class _TorchOpsRowWise:
    """Row-wise Adagrad (weight_decay 0) in torch ops: coalesce, mean of squares per row, the
    row's accumulator, one index_add_ into the table."""

    def __init__(self, p: torch.nn.Parameter):
        self.p = p
        self.sum = torch.zeros(p.shape[0], device=p.device)

    @torch.no_grad()
    def step(self):
        g = self.p.grad.coalesce()
        rows, v = g.indices()[0], g.values()
        s = self.sum[rows] + v.pow(2).mean(1)
        self.sum[rows] = s
        self.p.index_add_(0, rows, v * (-LR / (s.sqrt() + EPS)).unsqueeze(1))


def _setup(kind: str, shared) -> SetupFn:
    def setup():
        c = shared()
        p = torch.nn.Parameter(c["weight"].clone())
        p.grad = c["grad"]
        if kind == "pyoptim-adagrad":
            return pyoptim.Adagrad([p], lr=LR, eps=EPS).step
        if kind == "torch-adagrad":
            return torch.optim.Adagrad([p], lr=LR, eps=EPS).step
        if kind == "pyoptim-rowwise":
            return pyoptim.RowWiseAdagrad([p], lr=LR, eps=EPS).step
        return _TorchOpsRowWise(p).step

    return setup


def workloads(cfg: BenchConfig) -> list[Workload]:
    if cfg.device not in SIZES:
        return []
    cuda = cfg.device == "cuda"
    rows, lookups, zipf_s = SIZES[cfg.device]
    n_rows = cfg.n(rows, minimum=1024)
    n = cfg.n(lookups, minimum=256)
    size = f"{_fmt_dec(n_rows)}x{WIDTH}-{_fmt_dec(n)}" if cuda else f"{n_rows // 1024}kx{WIDTH}-{n}"
    out = []
    probe = has_row_probe(cfg.device)
    for group, impls, nbytes, what, n_tables in (
        ("adagrad-sparse", {"pyoptim": "pyoptim-adagrad", "torch-adagrad": "torch-adagrad"},
         sparse_adagrad_bytes, "Adagrad", 2),
        ("rowwise_adagrad", {"pyoptim": "pyoptim-rowwise", "torch-ops": "torch-ops"},
         rowwise_adagrad_bytes, "RowWiseAdagrad", 1),
    ):
        for dist in ("uniform", "zipf"):
            idx = _indices(dist, n_rows, n, zipf_s)
            unique = int(idx.unique().numel())
            shared = _shared(n_rows, WIDTH, idx, cfg.device)
            law = dist if dist == "uniform" else f"Zipf({zipf_s:g})"
            out.append(
                Workload(
                    name=f"{group}/fp32-{size}-{dist}",
                    group=group,
                    numel=unique * WIDTH,
                    n_tensors=1,
                    bytes_per_step=nbytes(unique, n, WIDTH, torch.float32),
                    impls={name: _setup(kind, shared) for name, kind in impls.items()}
                    | ({"row-probe": row_probe(lambda c=shared: c()["grad"], n_tables)}
                       if probe else {}),
                    baseline="pyoptim",
                    description=(f"{what}, sparse grad, float32 {n_rows}x{WIDTH} table, {n} "
                                 f"lookups ({law}, {unique} unique rows)"),
                    cleanup=shared.cleanup,
                )
            )
    return out
