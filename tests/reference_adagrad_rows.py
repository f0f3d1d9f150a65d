"""Plain-PyTorch references for Adagrad's sparse step and for row-wise Adagrad.

`sparse_adagrad_reference`: torch.optim.adagrad._single_tensor_adagrad's sparse branch (torch
2.14) on the coalesced gradient, with dense gathers and scatters instead of sparse_mask:
    state_sum.add_(grad_values.pow(2))
    std = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
    param.add_(grad_values / std, alpha=-clr)
`rowwise_adagrad_reference`: FBGEMM's EXACT_ROWWISE_ADAGRAD (Note [Row-wise Adagrad] in
csrc/include/pyoptim/math/rowwise_adagrad.h), the row's sum of squares in the lane order of
Note [Row sum lanes].

Both run in the math type pyoptim uses (the param's dtype for float32 / float64, float32 for
bfloat16 / float16, rounded once on store), with the pins of tests/reference_sparse_adam.py: IEEE
sqrt and pyoptim's duplicate-summation order (ordered_row_sum). `param.add_(x, alpha=a)` is one
fused multiply-add where ATen's CPU add kernel fuses it (tolerances.ATEN_FUSES_ADD_ALPHA), except
for a grad with one touched element and no dense dims, as in ATen (Note [Sparse Adagrad]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tests.reference_sparse_adam import ordered_row_sum, sqrt_rn

ROW_SUM_LANES = 32  # Note [Row sum lanes] (math::kRowSumLanes)


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def coalesced_rows(grad: Tensor, math: torch.dtype) -> tuple[Tensor, Tensor]:
    """Unique rows (over the sparse dims, linearized) and their summed value rows, in `math`."""
    idx = grad._indices()
    shape = grad.shape
    rows = torch.zeros(idx.shape[1], dtype=torch.long)
    for d in range(grad.sparse_dim()):
        rows = rows * shape[d] + idx[d]
    width = 1
    for n in shape[grad.sparse_dim():]:
        width *= n
    values = grad._values().to(math).reshape(idx.shape[1], width)
    return ordered_row_sum(rows, values)


def clr_of(lr: float, lr_decay: float, step: int) -> float:
    return lr / (1 + (step - 1) * lr_decay)  # torch's Python double


def sparse_adagrad_reference(param: Tensor, grad: Tensor, state_sum: Tensor, step: int, *,
                             lr: float, lr_decay: float, eps: float,
                             maximize: bool = False) -> None:
    """One step in place on param and state_sum; `step` is the count after the increment."""
    math = opmath(param.dtype)
    rows, g = coalesced_rows(grad, math)
    if rows.numel() == 0:
        return
    if maximize:
        g = -g
    n_rows = rows.new_tensor(1)
    for d in range(grad.sparse_dim()):
        n_rows = n_rows * param.shape[d]
    p2 = param.view(int(n_rows), -1)
    s2 = state_sum.view(int(n_rows), -1)
    p = p2[rows].to(math)
    s = s2[rows].to(math)
    s = s + g.pow(2)  # state_sum.add_(_make_sparse(grad, grad_indices, grad_values.pow(2)))
    std = sqrt_rn(s).add_(eps)  # std._values().sqrt_().add_(eps)
    clr = clr_of(lr, lr_decay, step)
    if rows.numel() == 1 and grad.dense_dim() == 0:
        # ATen's non-hybrid add_ of a sparse operand flagged coalesced (one entry, no dense
        # dims): the product rounded first (Note [Sparse Adagrad])
        p = p + -clr * (g / std)
    else:
        p = p.add(g / std, alpha=-clr)  # param.add_(..., alpha=-clr)
    p2[rows] = p.to(param.dtype)
    s2[rows] = s.to(state_sum.dtype)


def lane_sum(sq: Tensor) -> Tensor:
    """Per row of `sq` ([rows, D]): the sum in the order of Note [Row sum lanes]."""
    rows, width = sq.shape
    chunks = (width + ROW_SUM_LANES - 1) // ROW_SUM_LANES
    padded = sq.new_zeros(rows, chunks * ROW_SUM_LANES)  # + 0 leaves a lane unchanged
    padded[:, :width] = sq
    padded = padded.view(rows, chunks, ROW_SUM_LANES)
    acc = sq.new_zeros(rows, ROW_SUM_LANES)
    for c in range(chunks):
        acc = acc + padded[:, c]
    h = ROW_SUM_LANES // 2
    while h >= 1:
        acc = acc[:, :h] + acc[:, h:2 * h]
        h //= 2
    return acc[:, 0]


def rowwise_adagrad_reference(param: Tensor, grad: Tensor, state_sum: Tensor, step: int, *,
                              lr: float, lr_decay: float = 0.0, eps: float,
                              weight_decay: float = 0.0, decoupled: bool = False,
                              maximize: bool = False) -> None:
    """One step in place on param ([rows, ...]) and state_sum ([rows], the math type)."""
    math = opmath(param.dtype)
    n_rows = param.shape[0] if param.dim() else 1
    width = 1
    for n in param.shape[1:]:
        width *= n
    if width == 0 or n_rows == 0:
        return
    p2 = param.view(n_rows, width)
    if grad.is_sparse:
        rows, g = coalesced_rows(grad, math)
        if rows.numel() == 0:
            return
    else:
        rows, g = torch.arange(n_rows), grad.reshape(n_rows, -1).to(math)
    w = p2[rows].to(math)
    if maximize:
        g = -g
    wd = torch.tensor(weight_decay, dtype=math)
    clr = torch.tensor(clr_of(lr, lr_decay, step), dtype=math)
    h = g + wd * w if (weight_decay != 0 and not decoupled) else g  # grad += wd * weight
    g_avg = lane_sum(h * h) / width  # g_avg_square = g_local_sum_square / D
    s = state_sum[rows] + g_avg  # momentum1 + g_avg_square
    mult = clr / (sqrt_rn(s) + torch.tensor(eps, dtype=math))
    if weight_decay == 0:
        corr = torch.ones_like(mult)
    elif decoupled:
        corr = (1 - clr * wd).expand_as(mult)  # 1.0 - learning_rate * weight_decay
    else:
        corr = 1 - mult * wd  # 1.0 - multiplier * weight_decay
    w = corr[:, None] * w - mult[:, None] * g
    p2[rows] = w.to(param.dtype)
    state_sum[rows] = s
