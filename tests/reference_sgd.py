"""Plain-PyTorch references for pyoptim's SGD ops (dense and sparse).

Dense: `sgd_reference` copies torch.optim.sgd._single_tensor_sgd line by line (the same
expression forms: `grad.add(param, alpha=wd)`, `buf.mul_(m).add_(grad, alpha=1-d)`,
`grad.add(buf, alpha=m)`, `param.add_(grad, alpha=-lr)`), computed in the op's opmath (float32
for float32 / bfloat16 / float16, float64 for float64) and rounded once to the param dtype at
the end, which is what the kernel does (widen on load, round on store).

Sparse: `sgd_sparse_reference` implements the LAZY definition of pyoptim.SGD for sparse grads
(Note [Sparse SGD] in csrc/ops/sgd_cpu.cpp): duplicates summed in opmath in pyoptim's order
(reference_sparse_adam.ordered_row_sum: position order, in blocks of 256), then the dense
reference applied to the present rows only; rows absent from the grad are untouched. The
buffer's first step uses buf = grad on the present rows (the buffer is zeros elsewhere). Plain
SGD (no momentum, no weight decay) applies each duplicate row in turn, which for float32 /
float64 is torch's own `param.add_(grad, alpha=-lr)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tests.reference_sparse_adam import ordered_row_sum


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sgd_math(
    p: Tensor,
    g: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    first: bool,
    grad_scale: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One step on opmath tensors; returns (new param, new buffer). Inputs are not modified."""
    if grad_scale is not None:
        g = g / grad_scale
    grad = -g if maximize else g
    if weight_decay != 0:
        grad = grad.add(p, alpha=weight_decay)
    new_buf = None
    if momentum != 0:
        if first:
            new_buf = grad.clone()
        else:
            new_buf = buf.mul(momentum).add_(grad, alpha=1 - dampening)
        if nesterov:
            grad = grad.add(new_buf, alpha=momentum)
        else:
            grad = new_buf
    return p.add(grad, alpha=-lr), new_buf


def sgd_reference(p: Tensor, g: Tensor, buf: Tensor | None, **hp) -> None:
    """In place on p (and buf when momentum != 0), like the sgd_ op on one tensor."""
    t = opmath(p.dtype)
    np_, nb = sgd_math(p.to(t), g.to(t), None if buf is None else buf.to(t), **hp)
    p.copy_(np_)
    if nb is not None:
        buf.copy_(nb)


def sgd_sparse_reference(p: Tensor, grad: Tensor, buf: Tensor | None, **hp) -> None:
    """In place on p (and buf), like the sgd_sparse_ op: lazy, present rows only."""
    plain = hp["momentum"] == 0 and hp["weight_decay"] == 0
    if plain and hp.get("grad_scale") is None and p.dtype in (torch.float32, torch.float64):
        # torch.optim.SGD's own sparse step (it negates the grad for maximize). For bfloat16 /
        # float16 torch rounds lr * value to the param dtype first; the kernel (and the
        # sequential branch below) keeps it in float, like the dense kernel.
        p.add_(-grad if hp["maximize"] else grad, alpha=-hp["lr"])
        return
    t = opmath(p.dtype)
    sd = grad.sparse_dim()
    idx = grad._indices()
    lin = torch.zeros(idx.shape[1], dtype=torch.long)
    for d in range(sd):
        lin = lin * p.shape[d] + idx[d]
    width = p[(0,) * sd].numel() if p.numel() else 0
    P = p.reshape(-1, width)
    B = None if buf is None else buf.reshape(-1, width)
    allvals = grad._values().reshape(-1, width).to(t)
    # duplicates summed in pyoptim's (position, blocked) order, NOT via coalesce(), whose
    # summation order differs once a row has many duplicates
    rows, vals = ordered_row_sum(lin, allvals)
    if rows.numel() == 0:
        return
    if plain:  # each duplicate applied in turn in opmath, rounded per row, as the kernel does
        for k in range(lin.numel()):
            r = int(lin[k])
            row = P[r : r + 1].to(t)
            v = allvals[k : k + 1]
            new, _ = sgd_math(row, v, None, **dict(hp, first=False))
            P[r : r + 1] = new.to(p.dtype)
        return
    pr = P[rows].to(t)
    br = None if B is None else B[rows].to(t)
    new_p, new_b = sgd_math(pr, vals, br, **hp)
    P[rows] = new_p.to(p.dtype)
    if new_b is not None:
        B[rows] = new_b.to(buf.dtype)
