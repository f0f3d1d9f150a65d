"""Small helpers shared by the tests: error measures, snapshots, bitwise comparisons."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor


def normwise_error(x: Tensor, oracle: Tensor, x0: Tensor) -> float:
    """max |x - oracle| / max(max |oracle|, max |x0|); 0 for empty tensors (tolerances.py)."""
    if x.numel() == 0:
        return 0.0
    x, oracle = x.double(), oracle.double()
    scale = max(oracle.abs().max().item(), x0.double().abs().max().item())
    diff = (x - oracle).abs().max().item()
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def bits(t: Tensor) -> Tensor:
    """The raw bytes of a tensor (NaN == NaN, -0.0 != 0.0): for bitwise comparisons."""
    t = torch.view_as_real(t) if t.is_complex() else t
    if t.device.type == "meta":  # no data: shape and dtype are all there is
        return torch.tensor(list(t.shape), dtype=torch.int64).view(torch.uint8)
    if t.layout != torch.strided:
        t = t.to_dense()
    dense = torch.empty(t.shape, dtype=t.dtype)  # fresh row-major storage, whatever t's strides
    dense.copy_(t.detach())
    return dense.view(-1).view(torch.uint8)


def bitwise_equal(a: Tensor, b: Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            and a.layout == b.layout and torch.equal(bits(a), bits(b)))


def assert_bitwise_equal(a, b, what: str = "") -> None:
    """Recursively over lists / tuples / dicts of tensors."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), what
        assert bitwise_equal(a, b), f"{what}: tensors differ bitwise"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            assert_bitwise_equal(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


def snapshot(obj):
    """Deep copy of nested lists / dicts of tensors (to compare against after an error)."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def names_matching(optimizer, state_dict):
    """torch's load_state_dict pre-hook pattern (its docs): a checkpoint whose params are in
    another order, matched to this optimizer's by name (param_names)."""
    adapted = copy.deepcopy(optimizer.state_dict())
    for group, saved in zip(adapted["param_groups"], state_dict["param_groups"]):
        for pid, name in zip(group["params"], group["param_names"]):
            sid = saved["params"][saved["param_names"].index(name)]
            if sid in state_dict["state"]:
                adapted["state"][pid] = copy.deepcopy(state_dict["state"][sid])
    return adapted


def any_changed(before: Iterable[Tensor], after: Iterable[Tensor]) -> bool:
    return any(not bitwise_equal(a, b) for a, b in zip(before, after))


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of `dtype`'s numbers at |x|, as a float64 tensor: 2^(e - p) for
    2^e <= |x| < 2^(e+1) (p: the dtype's mantissa bits), the subnormal spacing below the smallest
    normal. Non-decreasing in |x|, so ulp(x) <= ulp(round(x)) for any rounding to nearest."""
    fi = torch.finfo(dtype)
    a = x.detach().double().abs()
    _, e = torch.frexp(a)  # a = m * 2^e, m in [0.5, 1)
    normal = torch.ldexp(torch.full_like(a, fi.eps), e - 1)
    return torch.where(a < fi.smallest_normal, torch.full_like(a, fi.smallest_normal * fi.eps),
                       normal)
