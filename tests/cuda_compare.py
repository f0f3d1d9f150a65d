"""What the CUDA tests of the opt-in modes share (tests/test_cuda_mixed.py for adam_,
tests/test_cuda_sgd_modes.py for sgd_): the skip without a GPU or CUDA kernels, the sizes and
seeds of their cases, seeded inputs, and the bit-for-bit comparison of a CUDA result with the
CPU op's."""

from __future__ import annotations

import pytest
import torch

needs_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.ops.pyoptim._built_with_cuda()),
    reason="needs a CUDA GPU (none visible) and a build with the CUDA kernels")

# One element, odd, around one quantization block (256), several blocks with a tail, and one
# tensor over several of the kernels' chunks (16384) with a partial last block.
SIZES = [1, 7, 255, 256, 257, 4099, 300_001]
SEEDS = [7, -3, 2**62 + 5, 0, 1, 99, 12345]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
            torch.float16: torch.int16, torch.int8: torch.int8, torch.uint8: torch.uint8,
            torch.int64: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's values as integers of its width, on the CPU (NaN == NaN, -0.0 != 0.0)."""
    return t.detach().cpu().contiguous().view(INT_VIEW[t.dtype])


def randn(n, seed, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale).to(dtype)


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, what: str,
                   any_nan: bool = False) -> None:
    """A CUDA result bit for bit equal to the CPU's; with any_nan, a NaN matches any NaN (IEEE
    leaves a NaN result's payload and sign to the implementation: Note [Bitwise agreement
    across paths])."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    assert actual.device.type == "cuda" and expected.device.type == "cpu", what
    a, e = bits(actual), bits(expected)
    if any_nan and actual.is_floating_point():
        nan_a, nan_e = actual.detach().cpu().isnan(), expected.isnan()
        assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ"
        a, e = a[~nan_a], e[~nan_e]
    if not torch.equal(a, e):
        bad = (a != e).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(f"{what}: {bad.shape[0]} of {a.numel()} elements differ; first at "
                             f"{i}: {a[i].item()} vs {e[i].item()} (bits)")
