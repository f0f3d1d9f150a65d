"""Plain-PyTorch reference for SparseAdam (torch.optim._functional.sparse_adam's formula).

`sparse_adam_reference` runs torch's own expression tree (torch 2.14,
torch/optim/_functional.py::sparse_adam) with plain dense gathers and scatters instead of
sparse_mask, in the math type pyoptim uses: the param's dtype for float32 / float64, float32 for
bfloat16 / float16 (widened on load, rounded once on store, as the kernels do; torch itself rounds
every intermediate to the param dtype). Duplicate indices are summed by coalesce() in that math
type, before the (non-linear) update. `weight_decay` is pyoptim's opt-in extension: decoupled
decay of the touched rows, applied before the update.

Two implementation-defined details of torch's CPU build are pinned here (and in pyoptim):
  * sqrt is the correctly rounded IEEE sqrt. torch's CPU sqrt goes through MKL VML, which is
    not correctly rounded (~15% of float32 results are 1 ULP off), and differs between builds.
  * duplicates of a row are summed in ascending position order (stable), in blocks of 256 for
    hot rows (ordered_row_sum). torch's coalesce() sums them left to right in the order of an
    unstable sort of the indices, which is position order for some inputs only (measured on
    the CPU: up to 16 entries, and large gradients).
`ieee_torch_mode()` applies both pins to torch itself, so torch.optim.SparseAdam's own code can
be compared with pyoptim bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def sqrt_rn(x: Tensor) -> Tensor:
    """Correctly rounded sqrt (numpy uses the hardware's IEEE sqrt)."""
    if x.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sqrt(x.detach().contiguous().numpy())).view(x.shape)
    return sqrt_rn(x.float()).to(x.dtype)


# Note [Blocked duplicate sums] in csrc/include/pyoptim/math/duplicate_sum.h (kDuplicateBlock)
DUPLICATE_BLOCK = 256


def segment_sum(seg: Tensor, values: Tensor) -> Tensor:
    """Row k of the result: the values of segment k summed left to right, each addition rounded
    in values' dtype. `seg` is non-decreasing with every id in [0, seg[-1]] present."""
    counts = torch.bincount(seg)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(seg.numel()) - starts[seg]
    out = torch.empty((counts.numel(), *values.shape[1:]), dtype=values.dtype)
    first = rank == 0
    out[seg[first]] = values[first]
    for k in range(1, int(counts.max()) if counts.numel() else 0):
        sel = rank == k
        sid = seg[sel]  # distinct segments: one addition each
        out[sid] = out[sid] + values[sel]
    return out


def ordered_row_sum(rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Unique rows (ascending) and, for each, its value rows summed in pyoptim's order: the
    duplicates in ascending position order, cut into blocks of DUPLICATE_BLOCK, each block summed
    left to right, then the block sums added left to right (a row with at most DUPLICATE_BLOCK
    duplicates: plainly left to right). Each addition rounded in values' dtype."""
    if rows.numel() == 0:
        return rows.new_zeros(0), values.new_zeros((0, *values.shape[1:]))
    order = torch.sort(rows, stable=True).indices
    srows, svals = rows[order], values[order]
    uniq, inverse, counts = torch.unique_consecutive(srows, return_inverse=True,
                                                     return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    block = (torch.arange(srows.numel()) - starts[inverse]) // DUPLICATE_BLOCK
    # (row, block) pairs are non-decreasing in sorted order: one segment per pair
    _, pair, pair_counts = torch.unique_consecutive(inverse * srows.numel() + block,
                                                    return_inverse=True, return_counts=True)
    block_sums = segment_sum(pair, svals)
    pair_row = inverse[torch.cumsum(pair_counts, 0) - pair_counts]
    return uniq, segment_sum(pair_row, block_sums)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def sparse_adam_reference(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    maximize: bool = False,
    weight_decay: float = 0.0,
) -> None:
    """One step for one param, in place. `step` is the count after this step's increment."""
    ot = opmath_dtype(param.dtype)
    g = grad.to(ot)
    g = g if not maximize else -g  # grad = grad if not maximize else -grad
    indices, values = g._indices(), g._values()
    if values.numel() == 0:
        return  # Skip update for empty grad
    sparse_dim = g.sparse_dim()
    rows_shape = param.shape[:sparse_dim]
    n_rows = math.prod(rows_shape)
    rows = torch.zeros(indices.shape[1], dtype=torch.long)
    for d in range(sparse_dim):
        rows = rows * rows_shape[d] + indices[d]
    # grad.coalesce(): the update is non-linear so indices must be unique
    rows, gv = ordered_row_sum(rows, values.reshape(values.shape[0], -1))

    P = param.to(ot).reshape(n_rows, -1)
    M = exp_avg.to(ot).reshape(n_rows, -1)
    V = exp_avg_sq.to(ot).reshape(n_rows, -1)

    old_m = M[rows]  # exp_avg.sparse_mask(grad)._values()
    upd_m = (gv - old_m) * (1 - beta1)  # grad_values.sub(old_exp_avg_values).mul_(1 - beta1)
    M[rows] = old_m + upd_m  # exp_avg.add_(make_sparse(exp_avg_update_values))
    old_v = V[rows]
    upd_v = (gv.pow(2) - old_v) * (1 - beta2)  # grad_values.pow(2).sub_(old).mul_(1 - beta2)
    V[rows] = old_v + upd_v  # exp_avg_sq.add_(make_sparse(exp_avg_sq_update_values))
    numer = upd_m + old_m  # exp_avg_update_values.add_(old_exp_avg_values)
    denom = sqrt_rn(upd_v + old_v) + eps  # ....add_(old_exp_avg_sq_values).sqrt_().add_(eps)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    p_rows = P[rows]
    if weight_decay != 0:
        p_rows = p_rows * (1 - lr * weight_decay)  # pyoptim: param.mul_(1 - lr * wd), touched rows
    P[rows] = p_rows + (-step_size * (numer / denom))  # param.add_(make_sparse(-step_size * ...))

    param.copy_(P.reshape(param.shape))
    exp_avg.copy_(M.reshape(param.shape))
    exp_avg_sq.copy_(V.reshape(param.shape))


class ieee_torch_mode(TorchDispatchMode):
    """Runs torch ops with the two pins above: IEEE sqrt, and coalesce() summing duplicates in
    pyoptim's order (ordered_row_sum). Used to compare torch.optim.SparseAdam's own code with
    pyoptim bitwise."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.sqrt.default:
            return sqrt_rn(args[0])
        if func is aten.sqrt_.default:
            return args[0].copy_(sqrt_rn(args[0]))
        if func is aten._coalesce.default:
            g = args[0]
            idx, vals = g._indices(), g._values()
            sizes = g.shape[: g.sparse_dim()]
            rows = torch.zeros(idx.shape[1], dtype=torch.long)
            for d in range(g.sparse_dim()):
                rows = rows * sizes[d] + idx[d]
            uniq, summed = ordered_row_sum(rows, vals)
            new_idx = torch.empty((g.sparse_dim(), uniq.numel()), dtype=torch.long)
            rest = uniq.clone()
            for d in reversed(range(g.sparse_dim())):
                new_idx[d] = rest % sizes[d]
                rest = rest // sizes[d]
            return torch.sparse_coo_tensor(new_idx, summed, g.shape, is_coalesced=True)
        return func(*args, **kwargs)
