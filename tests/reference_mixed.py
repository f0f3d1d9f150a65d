"""Plain-PyTorch references for adam_'s mixed-precision modes (Note [Master weights and
stochastic rounding] in csrc/include/pyoptim/math/stochastic_round.h).

* master weights: the float32 Adam step of tests/reference.py on the float32 master (the grad
  widened to float32), then the param rounded to nearest from the new master;
* stochastic rounding: the same float32 step on the param and moments widened from bfloat16,
  the moments stored rounded to nearest (as torch stores them), the param rounded
  stochastically by `round_bf16_stochastic` below, which computes the counter-based random bits
  of the Note in torch's int64 arithmetic (every intermediate kept below 2^63, no overflow), with
  the 64-bit key in Python integers;
* reduced-precision states (Note [Reduced-precision optimizer states] in
  csrc/include/pyoptim/math/quantize.h): the float32 step on float32 params and the moments
  decoded to float32, then the moments stored as bfloat16 rounded stochastically, or as 8-bit
  codes and block scales (`q8_encode` below, in int64 arithmetic), with the state stream's bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from reference import adam_reference
from reference_sgd import sgd_math
from reference_sparse_adam import sqrt_rn
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


def sr_key(seed: int, step: int, block: int, stream: int = 0) -> tuple[int, int]:
    z = (mix64(seed & M64) + step * 0x9E3779B97F4A7C15 + block * 0xD1B54A32D192ED03
         + stream * 0x8CB92BA72F3D8DD7) & M64
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


STATE_STREAM = 1
Q8_BLOCK = 256
Q8_TINY = 2.0**-120


def state_bits(n: int, seed: int, step: int) -> Tensor:
    """The 32 random bits of the moments of elements 0 .. n-1 at `step` (int64): one round of
    mix32 on the state stream."""
    index = torch.arange(n, dtype=torch.int64)
    out = torch.empty(n, dtype=torch.int64)
    for block in range((n >> 32) + 1):
        a, b = sr_key(seed, step, block, STATE_STREAM)
        sel = (index >> 32) == block
        out[sel] = _mix32((index[sel] & M32) ^ a) ^ b
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


def _f32(x: float) -> float:
    """x rounded to float32."""
    return float(torch.tensor(x, dtype=torch.float32))


def q8_scale(mx: float, sqrt_map: bool) -> tuple[float, float, bool]:
    """A block's (scale, inv16, finite) from its largest |m| or sqrt(v), in float32."""
    if not mx <= 3.4028234663852886e38:
        return math.nan, 0.0, False
    if mx < Q8_TINY:
        return 0.0, 0.0, True
    levels = 256.0 if sqrt_map else 127.0
    if sqrt_map:
        return _f32(mx * 2.0**-8), _f32(_f32(levels / mx) * 65536.0), True
    return _f32(mx / levels), _f32(_f32(levels / mx) * 65536.0), True


def q8_decode(codes: Tensor, scales: Tensor, sqrt_map: bool) -> Tensor:
    c = codes.reshape(-1).to(torch.float32)
    s = scales.repeat_interleave(Q8_BLOCK)[:c.numel()]
    if sqrt_map:
        root = (c + 1.0) * s
        return (root * root).reshape(codes.shape)
    return (c * s).reshape(codes.shape)


def q8_encode(x: Tensor, r: Tensor, sqrt_map: bool) -> tuple[Tensor, Tensor]:
    """Codes (int64) and float32 scales of float32 `x` (an exp_avg, or with sqrt_map the ROOTS
    sqrt(exp_avg_sq)), flattened, with 16 random bits per element (r = 0x8000: to nearest)."""
    x = x.reshape(-1)
    n = x.numel()
    r = r[:n]
    codes = torch.zeros(n, dtype=torch.int64)
    scales = torch.empty(-(-n // Q8_BLOCK), dtype=torch.float32)
    for k in range(scales.numel()):
        blk = x[k * Q8_BLOCK:(k + 1) * Q8_BLOCK]
        mag = blk if sqrt_map else blk.abs()
        mx = math.nan if bool(torch.isnan(mag).any()) else float(mag.max())
        scale, inv16, finite = q8_scale(mx, sqrt_map)
        scales[k] = scale
        if not finite:
            continue
        t = torch.floor(blk * torch.tensor(inv16, dtype=torch.float32)).to(torch.int64)
        c = (t + r[k * Q8_BLOCK:(k + 1) * Q8_BLOCK]) >> 16  # floor division by 2^16
        codes[k * Q8_BLOCK:(k + 1) * Q8_BLOCK] = (c - 1).clamp(0, 255) if sqrt_map else \
            c.clamp(-127, 127)
    return codes, scales


def adam_states_reference(params: Sequence[Tensor], grads, exp_avgs, exp_avg_sqs, state_steps,
                          seeds: Sequence[int], fmt: str, exp_avg_scales=None,
                          exp_avg_sq_scales=None, **hp) -> None:
    """In place: float32 params, moments in `fmt` ("bfloat16" or "8bit", with the scales)."""
    if hp.get("found_inf") is not None and float(hp["found_inf"]) != 0.0:
        return
    if fmt == "8bit":
        m32 = [q8_decode(m, s, False) for m, s in zip(exp_avgs, exp_avg_scales)]
        v32 = [q8_decode(v, s, True) for v, s in zip(exp_avg_sqs, exp_avg_sq_scales)]
    else:
        m32 = [m.float() for m in exp_avgs]
        v32 = [v.float() for v in exp_avg_sqs]
    adam_reference(params, grads, m32, v32, [], state_steps, **hp)
    for i, p in enumerate(params):
        bits = state_bits(p.numel(), seeds[i], int(state_steps[i].item()))
        r_m, r_v = bits >> 16, bits & 0xFFFF
        if fmt == "bfloat16":
            exp_avgs[i].copy_(round_bf16_stochastic(m32[i], r_m).reshape(p.shape))
            exp_avg_sqs[i].copy_(round_bf16_stochastic(v32[i], r_v).reshape(p.shape))
            continue
        mc, ms = q8_encode(m32[i], r_m, False)
        vc, vs = q8_encode(sqrt_rn(v32[i]), r_v, True)
        if not (bool(torch.isfinite(ms).all()) and bool(torch.isfinite(vs).all())):
            bad = ~(torch.isfinite(ms) & torch.isfinite(vs))  # a block with NaN or inf
            ms[bad] = vs[bad] = math.nan
            mask = bad.repeat_interleave(Q8_BLOCK)[:p.numel()]
            mc[mask] = 0
            vc[mask] = 0
        exp_avgs[i].copy_(mc.to(torch.int8).reshape(p.shape))
        exp_avg_sqs[i].copy_(vc.to(torch.uint8).reshape(p.shape))
        exp_avg_scales[i].copy_(ms)
        exp_avg_sq_scales[i].copy_(vs)


def sgd_modes_reference(params: Sequence[Tensor], grads, bufs, seeds: list[int], mode: str,
                        first: bool, buffer_scales=None, **hp) -> None:
    """In place, SGD with momentum in one of its modes (tests/reference_sgd.py's float32 math):
    "sr" (bfloat16 params stored rounded stochastically, bfloat16 buffers to nearest),
    "bfloat16" / "8bit" (float32 params, the buffer in that format, rounded stochastically).
    SGD keys the bits with (seed, step 0) and the step adds one to each seed: `seeds` too."""
    if hp.get("found_inf") is not None and float(hp["found_inf"]) != 0.0:
        return
    hp = {k: v for k, v in hp.items() if k != "found_inf"}
    if hp.get("grad_scale") is not None:
        hp["grad_scale"] = float(hp["grad_scale"])
    for i, (p, g) in enumerate(zip(params, grads)):
        n = p.numel()
        if mode == "8bit":
            b32 = None if first else q8_decode(bufs[i], buffer_scales[i], False)
        else:
            b32 = bufs[i].float()
        new_p, new_b = sgd_math(p.float(), g.float(), b32, first=first, **hp)
        if mode == "sr":
            r = random16(n, seeds[i], 0)
            p.copy_(round_bf16_stochastic(new_p.reshape(-1), r).reshape(p.shape))
            bufs[i].copy_(new_b)
        else:
            p.copy_(new_p)
            r_m = state_bits(n, seeds[i], 0) >> 16
            if mode == "bfloat16":
                bufs[i].copy_(round_bf16_stochastic(new_b.reshape(-1), r_m).reshape(p.shape))
            else:
                codes, scales = q8_encode(new_b, r_m, False)
                bad = ~torch.isfinite(scales)
                codes[bad.repeat_interleave(Q8_BLOCK)[:n]] = 0
                bufs[i].copy_(codes.to(torch.int8).reshape(p.shape))
                buffer_scales[i].copy_(scales)
        seeds[i] += 1


def kahan_store(p: Tensor, comp: Tensor, p32: Tensor, q32: Tensor) -> None:
    """In place: the 16-bit param p (p32 widened) and its compensation after a step to q32:
    y = (q - p) + c, p' = round(p + y) (round(q) where q is not finite), c' = round(y - (p' - p))
    (0 where p' is not finite)."""
    y = (q32 - p32) + comp.float()
    p.copy_(torch.where(torch.isfinite(q32), p32 + y, q32))
    p.masked_fill_(p.isnan(), math.nan)  # c10's NaN (bfloat16 0x7FC0): copy_ may keep a payload
    stored = p.float()
    comp.copy_(torch.where(torch.isfinite(stored), y - (stored - p32), 0.0))


# Kahan's special values (test_master.py, test_sgd_modes.py): a param column per value, 40 rows
# (SIMD bodies and tails): +-inf, NaN, the largest finite value pushed past it by the first
# step (grad sign), and finite values. lr: past the top ulp.
KAHAN_SPECIAL = [math.inf, -math.inf, math.nan, "max", "-max", 1.0, 0.5]
KAHAN_SPECIAL_GRAD = [1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -0.5]
KAHAN_SPECIAL_LR = {torch.bfloat16: 1e36, torch.float16: 64.0}


def kahan_special_case(dtype):
    big = torch.finfo(dtype).max
    col = [big if v == "max" else -big if v == "-max" else v for v in KAHAN_SPECIAL]
    param = torch.tensor(col * 40, dtype=dtype)
    grad = torch.tensor(KAHAN_SPECIAL_GRAD * 40, dtype=dtype)
    return param, grad


def assert_kahan_special(param, comp):
    """Infinity and NaN as torch's step stores them: the infinite params, and the largest ones
    pushed past the top of the range, are +-inf; NaN stays NaN; their compensations are 0."""
    g = param.float().view(40, len(KAHAN_SPECIAL))
    for col, expect in ((0, math.inf), (1, -math.inf), (3, math.inf), (4, -math.inf)):
        assert (g[:, col] == expect).all(), (col, g[:, col])
        assert (comp.view(40, -1)[:, col] == 0).all()
    assert g[:, 2].isnan().all()
    assert g[:, 5:].isfinite().all()


def adam_kahan_reference(params: Sequence[Tensor], grads, exp_avgs, exp_avg_sqs,
                         max_exp_avg_sqs, state_steps, comps: Sequence[Tensor], **hp) -> None:
    """In place: 16-bit params, moments and compensations (Note [Kahan-compensated 16-bit
    params]): the float32 step on the widened param, then kahan_store."""
    if hp.get("found_inf") is not None and float(hp["found_inf"]) != 0.0:
        return
    p32 = [p.float() for p in params]
    q32 = [p.clone() for p in p32]
    m32 = [m.float() for m in exp_avgs]
    v32 = [v.float() for v in exp_avg_sqs]
    x32 = [x.float() for x in max_exp_avg_sqs]
    adam_reference(q32, [g.float() for g in grads], m32, v32, x32, state_steps, **hp)
    for i, p in enumerate(params):
        kahan_store(p, comps[i], p32[i], q32[i])
        exp_avgs[i].copy_(m32[i])
        exp_avg_sqs[i].copy_(v32[i])
    for x, x_new in zip(max_exp_avg_sqs, x32):
        x.copy_(x_new)


def sgd_kahan_reference(params: Sequence[Tensor], grads, bufs, comps: Sequence[Tensor],
                        first: bool, **hp) -> None:
    """In place: 16-bit params, their buffers (one per param with momentum, none without; of the
    param's dtype) and compensations (Note [Kahan-compensated 16-bit params]): the float32 step
    of tests/reference_sgd.py on the widened param, then kahan_store; the buffer rounded to
    nearest."""
    if hp.get("found_inf") is not None and float(hp["found_inf"]) != 0.0:
        return
    hp = {k: v for k, v in hp.items() if k != "found_inf"}
    if hp.get("grad_scale") is not None:
        hp["grad_scale"] = float(hp["grad_scale"])
    momentum = hp["momentum"] != 0
    for i, (p, g) in enumerate(zip(params, grads)):
        p32 = p.float()
        b32 = bufs[i].float() if momentum and not first else None
        q32, new_b = sgd_math(p32, g.float(), b32, first=first, **hp)
        kahan_store(p, comps[i], p32, q32)
        if momentum:
            bufs[i].copy_(new_b)
