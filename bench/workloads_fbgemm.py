"""Row-wise Adagrad against FBGEMM's CPU table-batched embedding (the peer), when it imports.

FBGEMM (`pip install fbgemm-gpu-cpu`; `make bench` installs it next to torch) fuses the optimizer
into its embedding backward: `SplitTableBatchedEmbeddingBagsCodegen` with
`EmbOptimType.EXACT_ROWWISE_ADAGRAD` updates the table's rows while it computes their gradient,
so its update cannot be timed on its own. The workload therefore times one training step of the
embedding layer alone, the same for both impls: the forward of a batch of lookups, the backward
of a fixed output gradient, and the update.

  pyoptim      nn.EmbeddingBag(sparse=True, mode="sum") forward and backward (an uncoalesced COO
               grad), then pyoptim.RowWiseAdagrad.step()
  fbgemm-tbe   FBGEMM's TBE forward, then its backward with the fused row-wise Adagrad update

Same table (1M x 128 float32, one table), same 65,536 lookups per step as the SparseAdam rows
(bags of one id, so every lookup is a row of the gradient), uniform and Zipf(1.2); lr 0.01, eps
1e-8 (FBGEMM's epsilon is added outside the square root, as pyoptim's). Bytes per step: the
update's (bench/bytes.py:rowwise_adagrad_bytes); both impls also move the forward's output and
the gradient, so %probe understates the update's own share. No workload when FBGEMM or
pyoptim.RowWiseAdagrad is missing (bench/README.md says why).
"""

from __future__ import annotations

import torch

import pyoptim

from .harness import BenchConfig, SetupFn, Workload
from .workloads_sparse_adam import SIZES, WIDTH, _indices

LR, EPS = 0.01, 1e-8


def fbgemm_tbe():
    """FBGEMM's CPU TBE class and enums, or None where it does not import."""
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception:  # not installed, or built for another torch
        return None
    return (SplitTableBatchedEmbeddingBagsCodegen, EmbOptimType, SparseType, EmbeddingLocation,
            PoolingMode, ComputeDevice)


def _pyoptim_setup(n_rows: int, idx: torch.Tensor, weight: torch.Tensor) -> SetupFn:
    def setup():
        emb = torch.nn.EmbeddingBag(n_rows, WIDTH, mode="sum", sparse=True)
        with torch.no_grad():
            emb.weight.copy_(weight)
        opt = pyoptim.RowWiseAdagrad(emb.parameters(), lr=LR, eps=EPS)
        offsets = torch.arange(idx.numel())
        grad_out = torch.ones(idx.numel(), WIDTH)

        def step():
            emb.weight.grad = None
            emb(idx, offsets).backward(grad_out)
            opt.step()

        return step

    return setup


def _fbgemm_setup(n_rows: int, idx: torch.Tensor, weight: torch.Tensor, api) -> SetupFn:
    tbe_cls, opt_type, sparse_type, location, pooling, compute = api

    def setup():
        tbe = tbe_cls(
            embedding_specs=[(n_rows, WIDTH, location.HOST, compute.CPU)],
            optimizer=opt_type.EXACT_ROWWISE_ADAGRAD, learning_rate=LR, eps=EPS,
            weights_precision=sparse_type.FP32, pooling_mode=pooling.SUM, device="cpu")
        with torch.no_grad():
            tbe.split_embedding_weights()[0].copy_(weight)
        offsets = torch.arange(idx.numel() + 1)
        grad_out = torch.ones(idx.numel(), WIDTH)

        def step():
            tbe(idx, offsets).backward(grad_out)

        return step

    return setup


def workloads(cfg: BenchConfig) -> list[Workload]:
    api = fbgemm_tbe()
    if cfg.device != "cpu" or api is None:
        return []
    from .bytes import rowwise_adagrad_bytes

    rows, lookups, zipf_s = SIZES["cpu"]
    n_rows = cfg.n(rows, minimum=1024)
    n = cfg.n(lookups, minimum=256)
    weight = torch.randn(n_rows, WIDTH, generator=torch.Generator().manual_seed(3)) * 0.01
    out = []
    for dist in ("uniform", "zipf"):
        idx = _indices(dist, n_rows, n, zipf_s)
        unique = int(idx.unique().numel())
        out.append(Workload(
            name=f"rowwise_adagrad-train/fp32-{n_rows // 1024}kx{WIDTH}-{n}-{dist}",
            group="rowwise_adagrad",
            numel=unique * WIDTH,
            n_tensors=1,
            bytes_per_step=rowwise_adagrad_bytes(unique, n, WIDTH, torch.float32),
            impls={"pyoptim": _pyoptim_setup(n_rows, idx, weight),
                   "fbgemm-tbe": _fbgemm_setup(n_rows, idx, weight, api)},
            description=(f"embedding layer train step (forward, backward, row-wise Adagrad), "
                         f"float32 {n_rows}x{WIDTH}, {n} {dist} lookups ({unique} unique rows): "
                         "pyoptim EmbeddingBag + RowWiseAdagrad vs FBGEMM TBE (fused update)"),
            targets={"fbgemm-tbe": 1.0},
        ))
    return out
