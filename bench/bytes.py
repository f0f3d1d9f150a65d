"""Bytes each optimizer step moves through memory (per parameter element, or per step).

The model is the minimum traffic of one fused pass: every tensor the update reads is read once,
every tensor it writes is written once, and nothing else (no temporaries, no re-reads). It is
what an ideal kernel moves, so `bytes / time` is the bandwidth a step achieves and can be put
next to the machine's streaming bandwidth (the probes of harness.ReferenceProbe). Impls that make
several passes (torch's for-loop and foreach) move more than this; their GB/s column then says
how far they are from a one-pass kernel, not what the memory bus carried.

Cache-line write-allocate traffic is not counted, as in STREAM: the probe has the same read/write
mix as Adam, so the two are comparable.

    fp32 Adam/AdamW   read p, g, m, v; write p, m, v      7 x 4 = 28 B/elem
    + amsgrad         read and write max_exp_avg_sq      + 2 x 4 =  8
    SGD (no momentum) read p, g; write p                  3 x 4 = 12
    SGD + momentum    read p, g, buf; write p, buf        5 x 4 = 20
    dense, k states   read p, g, each state; write p and  (3 + 2k) x 4 (Adamax: 28)
                      each state
    sparse (COO grad of nnz rows, u unique rows, width w):
      SparseAdam      read + write p, m, v of each unique row; read every value row and index
                      6 x 4 x u x w + 4 x nnz x w + 8 x nnz
      SGD (plain)     read + write p of each unique row; read every value row and index
                      2 x 4 x u x w + 4 x nnz x w + 8 x nnz
      Adagrad         read + write p, sum of each unique row; read every value row and index
                      4 x 4 x u x w + 4 x nnz x w + 8 x nnz
      RowWiseAdagrad  read + write p and the row's one float accumulator; values and index
                      2 x 4 x u x w + 8 x u + 4 x nnz x w + 8 x nnz
    Every value row is counted, duplicates included (they must all be read); u is the exact
    number of distinct rows in the workload's own index tensor.
"""

from __future__ import annotations

import torch


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def adam_bytes_per_elem(
    dtype: torch.dtype = torch.float32,
    *,
    amsgrad: bool = False,
    grad_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> int:
    """Adam and AdamW (weight decay adds no traffic): read p, g, m, v; write p, m, v."""
    p = itemsize(dtype)
    g = itemsize(grad_dtype or dtype)
    s = itemsize(state_dtype or dtype)
    n_state = 3 if amsgrad else 2  # exp_avg, exp_avg_sq (+ max_exp_avg_sq)
    return 2 * p + g + 2 * n_state * s


def dense_bytes_per_elem(dtype: torch.dtype, states: int) -> int:
    """A dense optimizer (Note [Dense optimizers] in csrc/include/pyoptim/dense.h) with `states`
    state tensors of the param's dtype: read p, g and every state; write p and every state."""
    return (3 + 2 * states) * itemsize(dtype)


def sgd_bytes_per_elem(
    dtype: torch.dtype = torch.float32, *, momentum: bool = False, first_step: bool = False
) -> int:
    """SGD: read p, g; write p. With momentum: also read and write the buffer (on the first
    step the buffer is only written: it is a copy of the gradient)."""
    e = itemsize(dtype)
    if not momentum:
        return 3 * e
    return (4 if first_step else 5) * e


def sparse_adam_bytes(
    unique_rows: int,
    nnz: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    *,
    index_bytes: int = 8,
) -> int:
    """SparseAdam, per step, for a COO gradient of `nnz` rows of `width` (duplicates included)
    touching `unique_rows` distinct rows: read and write p, exp_avg, exp_avg_sq of each unique
    row, read every value row once, read the indices (int64 by default)."""
    e = itemsize(dtype)
    return 6 * e * unique_rows * width + e * nnz * width + index_bytes * nnz


def sparse_sgd_bytes(
    unique_rows: int,
    nnz: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    *,
    momentum: bool = False,
    index_bytes: int = 8,
) -> int:
    """Sparse SGD, per step, for the same gradient: read and write p (and the momentum buffer)
    of each unique row, read every value row once, read the indices."""
    e = itemsize(dtype)
    n_arrays = 2 if momentum else 1  # p (+ momentum_buffer), each read and written
    return 2 * n_arrays * e * unique_rows * width + e * nnz * width + index_bytes * nnz


def sparse_adagrad_bytes(
    unique_rows: int,
    nnz: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    *,
    index_bytes: int = 8,
) -> int:
    """Adagrad with a sparse grad, per step: read and write p and the state sum of each unique
    row, read every value row once, read the indices."""
    e = itemsize(dtype)
    return 4 * e * unique_rows * width + e * nnz * width + index_bytes * nnz


def rowwise_adagrad_bytes(
    unique_rows: int,
    nnz: int,
    width: int,
    dtype: torch.dtype = torch.float32,
    *,
    index_bytes: int = 8,
) -> int:
    """Row-wise Adagrad with a sparse grad, per step: read and write p of each unique row and its
    one float32 accumulator (float64 for float64 params), read every value row once, read the
    indices."""
    e = itemsize(dtype)
    s = 8 if dtype == torch.float64 else 4
    return 2 * e * unique_rows * width + 2 * s * unique_rows + e * nnz * width + index_bytes * nnz


def stream_probe_bytes(numel: int, dtype: torch.dtype = torch.float32) -> int:
    """The 4-read/3-write probe (pyoptim._stream_probe_): 4 arrays of `numel` elements read,
    3 written back in place, as Adam does."""
    return 7 * itemsize(dtype) * numel


def copy_probe_bytes(numel: int, dtype: torch.dtype = torch.float32) -> int:
    """A copy (dst.copy_(src)): one array read, one written."""
    return 2 * itemsize(dtype) * numel
