"""CUDA sparse_adagrad_ and rowwise_adagrad_ against the CPU kernels, bitwise: the same math
headers, no implicit contraction, duplicates summed in the same blocked order (Note [Sparse rows
on the GPU]) and row sums in the same lane order (Note [Row sum lanes]).

Self-contained (like tests/test_cuda.py): the CPU kernel is the reference, itself checked against
the plain-PyTorch references elsewhere. Every test needs a GPU and skips with a reason without
one.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_bitwise_equal

import pyoptim  # noqa: F401  (registers the ops)

HAS_GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (none visible)")
ops = torch.ops.pyoptim
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _grad(kind, rows, width, dtype, gen):
    if kind == "dense":
        return torch.randn(rows, width, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "hot":  # one row with 1000 duplicates (4 blocks), a few others
        idx = torch.cat([torch.full((1000,), 3), torch.randint(0, rows, (50,), generator=gen)])
    else:
        idx = torch.randint(0, rows, (300,), generator=gen)
    vals = torch.randn(idx.numel(), width, generator=gen, dtype=torch.float64).to(dtype)
    return torch.sparse_coo_tensor(idx.view(1, -1), vals, (rows, width))


def _run(op, device, param, grads, sums, hyper, flags):
    p, s = param.to(device), sums.to(device)
    n = torch.tensor(0.0)
    for g in grads:
        op([p], [g.to(device)], [s], [n], [1], hyper, flags, [])
    return p.cpu(), s.cpu(), n


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [1, 31, 32, 33, 128, 300])
@pytest.mark.parametrize("kind", ["uniform", "hot"])
def test_sparse_adagrad_cuda_matches_cpu(dtype, width, kind):
    gen = torch.Generator().manual_seed(width)
    param = torch.randn(64, width, generator=gen, dtype=torch.float64).to(dtype)
    grads = [_grad(kind, 64, width, dtype, gen) for _ in range(2)]
    hyper, flags = [0.1, 0.01, 0.0, 1e-10], [True]
    cpu = _run(ops.sparse_adagrad_.default, "cpu", param, grads, torch.zeros_like(param), hyper,
               flags)
    gpu = _run(ops.sparse_adagrad_.default, "cuda", param, grads, torch.zeros_like(param), hyper,
               flags)
    assert_bitwise_equal(list(gpu), list(cpu))
    assert not torch.equal(cpu[0], param)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [1, 31, 32, 33, 128, 300])
@pytest.mark.parametrize("kind", ["dense", "uniform", "hot"])
@pytest.mark.parametrize("mode", [(0.0, False), (0.1, False), (0.1, True)],
                         ids=["none", "l2", "decoupled"])
def test_rowwise_adagrad_cuda_matches_cpu(dtype, width, kind, mode):
    gen = torch.Generator().manual_seed(width + 1)
    param = torch.randn(64, width, generator=gen, dtype=torch.float64).to(dtype)
    grads = [_grad(kind, 64, width, dtype, gen) for _ in range(2)]
    hyper, flags = [0.1, 0.01, mode[0], 1e-10], [False, mode[1]]
    sums = torch.zeros(64, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    cpu = _run(ops.rowwise_adagrad_.default, "cpu", param, grads, sums, hyper, flags)
    gpu = _run(ops.rowwise_adagrad_.default, "cuda", param, grads, sums, hyper, flags)
    assert_bitwise_equal(list(gpu), list(cpu))
    assert not torch.equal(cpu[0], param)


@needs_gpu
def test_bad_index_raises_before_any_write():
    p = torch.randn(6, 3, device="cuda")
    s = torch.zeros(6, device="cuda")
    g = torch.sparse_coo_tensor(torch.tensor([[1, 6]]), torch.randn(2, 3), (6, 3),
                                check_invariants=False).cuda()
    before = (p.clone(), s.clone())
    with pytest.raises(IndexError):
        ops.rowwise_adagrad_.default([p], [g], [s], [torch.tensor(0.0)], [1],
                                     [0.1, 0.0, 0.0, 1e-10], [False, False], [])
    assert torch.equal(p, before[0]) and torch.equal(s, before[1])
