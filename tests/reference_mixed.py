"""Plain-PyTorch references for adam_'s mixed-precision modes (Note [Master weights and
stochastic rounding] in csrc/include/pyoptim/math/stochastic_round.h).

* master weights: the float32 Adam step of tests/reference.py on the float32 master (the grad
  widened to float32), then the param rounded to nearest from the new master;
* stochastic rounding: the same float32 step on the param and moments widened from bfloat16,
  the moments stored rounded to nearest (as torch stores them), the param rounded
  stochastically by `round_bf16_stochastic` below, which computes the counter-based random bits
  of the Note in torch's int64 arithmetic (every intermediate kept below 2^63, no overflow), with
  the 64-bit key in Python integers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from reference import adam_reference
from torch import Tensor

M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """splitmix64's finalizer, in Python integers modulo 2^64."""
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z


def sr_key(seed: int, step: int, block: int) -> tuple[int, int]:
    z = (mix64(seed & M64) + step * 0x9E3779B97F4A7C15 + block * 0xD1B54A32D192ED03) & M64
    z = mix64(z)
    return z & M32, z >> 32


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for x in [0, 2^32), in int64 without overflow: c split in 16-bit
    halves."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + ((x * hi) & 0xFFFF) * 65536) & M32


def _mix32(x: Tensor) -> Tensor:
    """lowbias32."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def random16(n: int, seed: int, step: int) -> Tensor:
    """The 16 random bits of elements 0 .. n-1 of a tensor at `step` (int64)."""
    index = torch.arange(n, dtype=torch.int64)
    out = torch.empty(n, dtype=torch.int64)
    for block in range((n >> 32) + 1):
        a, b = sr_key(seed, step, block)
        sel = (index >> 32) == block
        lo = index[sel] & M32
        out[sel] = _mix32(_mix32(lo ^ a) ^ b) >> 16
    return out


def round_bf16_stochastic(x: Tensor, r: Tensor) -> Tensor:
    """float32 `x` (flattened, memory order) to bfloat16 with random bits `r` in [0, 2^16):
    the bit pattern plus r, truncated to its high 16 bits; NaN -> 0x7FC0."""
    u = x.reshape(-1).view(torch.int32).to(torch.int64) & M32
    out = ((u + r) >> 16) & 0xFFFF
    out = torch.where(torch.isnan(x.reshape(-1)), torch.full_like(out, 0x7FC0), out)
    out = out - (out >= 0x8000).to(torch.int64) * 0x10000  # as int16 bits
    return out.to(torch.int16).view(torch.bfloat16).reshape(x.shape)


def adam_master_reference(params: Sequence[Tensor], grads, masters, exp_avgs, exp_avg_sqs,
                          max_exp_avg_sqs, state_steps, **hp) -> None:
    """In place: float32 masters and moments, 16-bit params and grads."""
    if hp.get("found_inf") is not None and float(hp["found_inf"]) != 0.0:
        return
    g32 = [g.float() for g in grads]
    adam_reference(masters, g32, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **hp)
    for p, m in zip(params, masters):
        p.copy_(m)  # round to nearest even


def adam_sr_reference(params: Sequence[Tensor], grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                      state_steps, seeds: Sequence[int], **hp) -> list[Tensor]:
    """In place: bfloat16 params and state. Returns the float32 params before rounding."""
    if hp.get("found_inf") is not None and float(hp["found_inf"]) != 0.0:
        return [p.float() for p in params]
    p32 = [p.float() for p in params]
    m32 = [m.float() for m in exp_avgs]
    v32 = [v.float() for v in exp_avg_sqs]
    x32 = [x.float() for x in max_exp_avg_sqs]
    adam_reference(p32, [g.float() for g in grads], m32, v32, x32, state_steps, **hp)
    for i, p in enumerate(params):
        step = int(state_steps[i].item())
        r = random16(p.numel(), seeds[i], step)
        p.copy_(round_bf16_stochastic(p32[i], r))
        exp_avgs[i].copy_(m32[i])
        exp_avg_sqs[i].copy_(v32[i])
    for x, x_new in zip(max_exp_avg_sqs, x32):
        x.copy_(x_new)
    return p32
