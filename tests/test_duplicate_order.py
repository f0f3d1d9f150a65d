"""The order in which duplicate rows of a sparse gradient are summed (Note [Blocked duplicate sums]
in csrc/include/pyoptim/math/duplicate_sum.h), pinned by hand-computed values: a row with 700
duplicates is summed as three blocks (256, 256, 188), each left to right, then the block sums
left to right. The values are chosen so that every other order gives a different number:

    v_0 = 2, v_1 .. v_699 = t, where 2 + t rounds back to 2 (t is below half an ulp of 2)
    blocked (256):        (2 + 255 t -> 2) + 256 t + 188 t   = 2 + 444 t   (exact)
    left to right:        2 + t + t + ...                     = 2
    blocks of 128 / 512:  2 + 572 t / 2 + 188 t

Checked for both sparse ops (sparse_adam_ with beta1 = 0 stores the gradient in exp_avg; sgd_sparse_
with momentum stores it in the buffer on its first step), on every CPU ISA level and on CUDA, and
for the tests' reference (tests/reference_sparse_adam.ordered_row_sum) itself.
"""

from __future__ import annotations

import contextlib

import op_calls
import pytest
import torch

from pyoptim import _ops
from tests.reference_sparse_adam import DUPLICATE_BLOCK, ordered_row_sum

N_DUP = 700
WIDTH = 37  # a vector body and a scalar tail at every ISA level
# t: the largest power of two with 2 + t == 2 in the dtype the sum runs in
TINY = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
HAS_GPU = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_GPU, reason="needs a CUDA GPU (none visible)"))]


def hot_row_grad(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, float]:
    """A (5, WIDTH) COO gradient: row 3 has N_DUP duplicates (2 first, then t), scattered among
    single entries of rows 0 and 4 in a shuffled order; returns it and the blocked sum."""
    t = TINY[dtype]
    gen = torch.Generator().manual_seed(0)
    rows = torch.cat([torch.full((N_DUP,), 3), torch.tensor([0, 4, 0])])
    vals = torch.full((rows.numel(), WIDTH), t, dtype=torch.float64)
    vals[0] = 2.0
    vals[N_DUP:] = torch.randn(3, WIDTH, generator=gen, dtype=torch.float64)
    # shuffle positions, keeping v_0 = 2 the first duplicate of row 3 in position order
    perm = torch.cat([torch.tensor([0]), 1 + torch.randperm(rows.numel() - 1, generator=gen)])
    rows, vals = rows[perm], vals[perm]
    grad = torch.sparse_coo_tensor(rows[None], vals.to(dtype), (5, WIDTH)).to(device)
    return grad, 2.0 + 444 * t


def test_expected_value_is_only_the_blocked_order():
    assert DUPLICATE_BLOCK == 256
    t = torch.tensor(TINY[torch.float32], dtype=torch.float32)
    two = torch.tensor(2.0, dtype=torch.float32)
    assert two + t == two  # t vanishes against 2 ...
    assert two + 444 * t != two and two + 444 * t == 2.0 + 444 * 2.0**-24  # ... 444 t does not


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reference_sums_in_blocks(dtype):
    grad, expect = hot_row_grad(dtype, "cpu")
    rows, sums = ordered_row_sum(grad._indices()[0], grad._values())
    assert rows.tolist() == [0, 3, 4]
    assert torch.all(sums[1] == expect), sums[1, :3]
    # rows of one block: plainly left to right (row 0 has two entries)
    g0 = grad._values()[grad._indices()[0] == 0]
    assert torch.equal(sums[0], g0[0] + g0[1])


def _levels(device):
    """(name, context) for every CPU ISA level on the CPU; one pass on CUDA."""
    if device != "cpu":
        return [("cuda", contextlib.nullcontext())]
    return [(level, _ops.cpu_capability_override(level))
            for level in _ops.available_cpu_capabilities()]


def summed_by_op(op: str, grad: torch.Tensor) -> torch.Tensor:
    """The op's state after one step from zeros: it holds the summed gradient itself (rounded to
    the param dtype), zeros on rows absent from the grad."""
    p = torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device)
    state = torch.zeros_like(p)
    if op == "sparse_adam_":  # beta1 = 0: exp_avg = (g - 0) * 1 + 0 = g
        op_calls.sparse_adam_([p], [grad], [state], [torch.zeros_like(p)], [0], lr=1e-3, beta1=0.0,
                          beta2=0.999, eps=1e-8, weight_decay=0.0, maximize=False)
    else:  # lazy momentum, first step: buf = g
        op_calls.sgd_sparse_(p, grad, state, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
                         nesterov=False, maximize=False, is_first_step=True)
    return state


OPS = ["sparse_adam_", "sgd_sparse_"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_ops_sum_in_blocks(op, device, dtype):
    for level, forced in _levels(device):
        grad, expect = hot_row_grad(dtype, device)
        with forced:
            g = summed_by_op(op, grad)
        assert torch.all(g[3] == expect), (level, g[3, :3].tolist())
        assert not g[1].any() and not g[2].any()  # rows absent from the grad


# rows 0..6 get these many duplicates: one block, a full block, one past it, two full blocks, ...
BOUNDARY_COUNTS = [1, 255, 256, 257, 512, 513, 700]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("width", [5, 300])  # 300: a vector body and a tail; 3 warp passes
def test_block_boundaries_match_reference(op, device, dtype, width):
    """Random values, duplicate counts around the block size: the op's summed rows equal
    ordered_row_sum's bitwise (summed in the op's math type, rounded once to the dtype)."""
    gen = torch.Generator().manual_seed(width)
    rows = torch.cat([torch.full((n,), r) for r, n in enumerate(BOUNDARY_COUNTS)])
    perm = torch.randperm(rows.numel(), generator=gen)
    rows = rows[perm]
    n_rows = len(BOUNDARY_COUNTS) + 1  # the last row is never touched
    vals = torch.randn(rows.numel(), width, generator=gen, dtype=torch.float64).to(dtype)
    grad = torch.sparse_coo_tensor(rows[None], vals, (n_rows, width)).to(device)
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    uniq, sums = ordered_row_sum(rows, vals.to(math_dtype))
    assert uniq.tolist() == list(range(len(BOUNDARY_COUNTS)))
    expect = sums.to(dtype)
    for level, forced in _levels(device):
        with forced:
            g = summed_by_op(op, grad).cpu()
        bad = (g[:-1] != expect).sum().item()
        assert bad == 0, (level, f"{bad} elements differ")
        assert not g[-1].any()
