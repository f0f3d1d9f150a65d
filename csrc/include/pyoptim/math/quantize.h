// Reduced-precision optimizer states: bfloat16 and block-wise 8-bit moments for float32 params.
// One definition of the maps and their rounding for every path: the CPU SIMD body (V a float
// vector, U its uint32 vector), the CPU scalar tail, the conversion ops and device code (V =
// float, U = uint32_t: cuda/adam_mixed_kernels.cuh and cuda/sgd_mixed_kernels.cuh, Note
// [Mixed-mode launches] in cuda/mixed_launch.cuh).
//
// Note [Reduced-precision optimizer states]
// Opt-in per param group with `state_dtype=` (Adam, AdamW, and SGD with momentum; float32
// params; off by default, so the default is torch's state in the param's dtype). The update is
// math::adam_step (math::sgd_step) in float32 on the moments (the momentum buffer) widened from
// their stored form; only their storage differs. SGD's buffer takes exp_avg's format, map and
// random bits (bits_of_m); SGD has no step count, so its keys are sr_key(seed, 0, ...) and the
// op adds one to the seed tensor after each step it takes.
//
//  * state_dtype=torch.bfloat16: exp_avg and exp_avg_sq are bfloat16 tensors, stored rounded
//    stochastically (math/stochastic_round.h), so a moment whose per-step change is below half a
//    bfloat16 ulp (exp_avg_sq with beta2 = 0.999 changes by 0.1 % a step, bfloat16's half ulp is
//    0.2-0.4 %) still moves on average instead of stalling. 4 (param) x 2 + 4 (grad) + 2 x 2 x 2
//    (moments read and written) = 20 bytes per element instead of 28.
//  * state_dtype="8bit": exp_avg is int8 and exp_avg_sq uint8 (codes shaped like the param,
//    contiguous), and each block of kQ8Block = 256 consecutive elements in row-major order (a
//    param in another layout is stepped on row-major copies) has one float32 scale per moment:
//    exp_avg_scale, exp_avg_sq_scale (ceil(numel / 256) each). 16 bytes per element
//    (+ 2 x 4 x 2 / 256 for the scales), 2.03 bytes of state per param instead of 8.
//      exp_avg:     m = code * scale,               code in [-127, 127], scale = absmax(m) / 127
//      exp_avg_sq:  v = ((code + 1) * scale)^2,     code in [0, 255],    scale = sqrt(max(v)) / 256
//    Why these maps (and not bitsandbytes' dynamic tree map): both are a multiply to decode and a
//    multiply, a floor and a clamp to encode, with no table lookup (a gather on the CPU) or
//    search, so the step stays bandwidth-bound; and their rounding is stochastic (below), which
//    keeps slowly moving moments from stalling, the failure that a finer map with round to
//    nearest only makes rarer. exp_avg_sq is stored as its square root, linearly: the relative
//    resolution of sqrt(v), the quantity the update divides by, is 1 / (256 t) where
//    t = sqrt(v / max v), so a block's small second moments keep a coarse but bounded
//    resolution. Its map has no zero ("zero-point excluded": the smallest value is
//    (scale)^2 = max v / 65536), so an element with a small v next to a large one in its block is
//    never divided by eps alone: its step is bounded by |m| / (sqrt(max v) / 256), a few times
//    lr, where a zero would give lr * m / eps. A block whose moments are all zero stays zero
//    (scale 0).
//    Encoding (both): code = clamp(floor(x * inv + r / 2^16), lo, hi), r 16 random bits, with
//    inv = 127 / absmax (exp_avg; x = m) or 256 / sqrt(max v) (exp_avg_sq; x = sqrt(v), minus 1
//    for the excluded zero): stochastic rounding in code space, computed exactly in 16.16 fixed
//    point as floor((floor(x * inv * 2^16) + r) / 2^16) (one float multiply, a conversion, an
//    integer add and shift), so P(round up) is the code's fraction to 2^-16 and E[code] =
//    x * inv inside the range (the decoded exp_avg_sq is then biased up by at most a quarter of
//    its squared step, (scale)^2 / 4, for its square). Conversions (a float32 state loaded into
//    an 8-bit optimizer) round to nearest instead: r = 2^15. The new sqrt(v) is the one the
//    update divides by (math::adam_step_root), so encoding costs no second square root.
//    A block whose absmax is NaN or infinite (a NaN or inf gradient) is stored as codes 0 with
//    scale NaN: every element of the block decodes to NaN, as the float32 state would be NaN
//    where the gradient was. A block whose absmax is below kQ8Tiny = 2^-120 (so that 127 / absmax
//    stays finite) is stored as zeros.
//
// The random bits of both modes: those of math/stochastic_round.h's Note, on the state stream
// (sr_key's `stream` = kStateStream, so they never repeat the bits of a stochastically rounded
// param), with one round of mix32 instead of two (sr_random32): element i draws 32 bits;
// exp_avg takes the high 16, exp_avg_sq the low 16 (independent: mix32 is a bijection, so over
// a 2^32 block the pairs are uniform). The seed is the param's `sr_seed` (state["sr_seed"]).
// tests/reference_mixed.py computes the same in plain PyTorch.
//
// Speed: bfloat16 states move 20 of fp32's 28 bytes and stay bandwidth-bound. The 8-bit step
// moves 16 bytes but computes more per element than it saves in memory time: decode, block
// maxima (q8_absmax_bits), the hash and encode. In L1, one Zen 4 core: float32 state 0.28
// ns per element (AVX-512; 0.29 AVX2), 8 bits 0.66-0.69 (0.84 AVX2), so on a machine with few
// cores per memory channel it is compute-bound (README: the bench table).
#pragma once

#include <cstdint>

#include "pyoptim/macros.h"
#include "pyoptim/math/scalar_ops.h"
#include "pyoptim/math/stochastic_round.h"

namespace pyoptim {
namespace math {

constexpr int64_t kQ8Block = 256;
constexpr float kQ8Tiny = 0x1p-120f;
constexpr uint64_t kStateStream = 1;  // sr_key's stream of the moments' random bits

// ---- scalar primitives (the SIMD vector types give the same names) --------------------------
// uint32 lanes hold int32 values (two's complement) where the encoders compute in integers.
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vfloor_int(float x) {  // floor(x), |x| < 2^31
#if defined(__CUDA_ARCH__)
  return static_cast<uint32_t>(__float2int_rd(x));
#else
  // the builtin, not std::floor: std::floor(float) is an inline library function, which an
  // unoptimized build emits out of line, compiled with the ISA's flags (csrc/README.md, rule 2)
  return static_cast<uint32_t>(static_cast<int32_t>(__builtin_floorf(x)));
#endif
}
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vsar16(uint32_t u) {  // int32 >> 16, rounding down
  const int32_t i = static_cast<int32_t>(u);
  return static_cast<uint32_t>(i >= 0 ? i >> 16 : ~(~i >> 16));
}
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vclamp_int(uint32_t u, int32_t lo, int32_t hi) {
  const int32_t i = static_cast<int32_t>(u);
  return static_cast<uint32_t>(i < lo ? lo : (i > hi ? hi : i));
}
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vlow16(uint32_t u) { return u & 0xFFFFu; }
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vmax_u32(uint32_t a, uint32_t b) {
  return a > b ? a : b;
}

// The 32 random bits of the element whose index has low 32 bits `lo`: one round of mix32 (a
// param's stochastic rounding takes two, sr_random16), as the moments' rounding is an
// unbiased dither with a new key each step, and the second round would add two multiplies and
// three shift-xors per element to the compute-bound 8-bit step.
template <class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U sr_random32(U lo, const SrKey& k) {
  return mix32(lo ^ U(k.a)) ^ U(k.b);
}

// The 16 bits of exp_avg and of exp_avg_sq from the element's 32.
template <class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U bits_of_m(U bits) {
  return vshr<16>(bits);
}
template <class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U bits_of_v(U bits) {
  return vlow16(bits);
}

// ---- bfloat16 moments -------------------------------------------------------------------------
// The two moments' bfloat16 bits from one draw of 32 random bits.
template <class V, class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void round_moments_bf16(V m, V v, U bits, U& m_bits,
                                                           U& v_bits) {
  m_bits = round_bf16_stochastic(m, bits_of_m(bits));
  v_bits = round_bf16_stochastic(v, bits_of_v(bits));
}

// ---- 8-bit moments ----------------------------------------------------------------------------
struct Q8Scale {
  float scale;  // stored: decode multiplies by it
  float inv16;  // encode multiplies by it: 2^16 / scale (the code in 16.16 fixed point)
  bool finite;  // false: store codes 0 and scale NaN
};

PYOPTIM_HOST_DEVICE PYOPTIM_INLINE float q8_nan() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x7FC00000);
#else
  return __builtin_nanf("");
#endif
}

// exp_avg's block scale from the block's largest |m| (NaN-propagating).
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE Q8Scale q8_scale_signed(float absmax) {
  if (!(absmax <= 3.4028234663852886e38f)) return Q8Scale{q8_nan(), 0.0f, false};
  if (absmax < kQ8Tiny) return Q8Scale{0.0f, 0.0f, true};
  return Q8Scale{absmax / 127.0f, (127.0f / absmax) * 65536.0f, true};
}
// exp_avg_sq's block scale from the block's largest sqrt(v) (NaN-propagating).
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE Q8Scale q8_scale_sqrt(float root_max) {
  if (!(root_max <= 3.4028234663852886e38f)) return Q8Scale{q8_nan(), 0.0f, false};
  if (root_max < kQ8Tiny) return Q8Scale{0.0f, 0.0f, true};
  return Q8Scale{root_max * 0x1p-8f, (256.0f / root_max) * 65536.0f, true};
}

// Running block maxima (NaN-propagating): of |m|, and of sqrt(v).
template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V q8_absmax(V acc, V m) {
  return vmax_nan(acc, vabs(m));
}
template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V q8_max(V acc, V root) {
  return vmax_nan(acc, root);
}
// The same maxima in the CPU's SIMD bodies, kept as the bits of |x| in uint32 lanes: an unsigned
// integer max orders non-negative floats as a float max does and puts every NaN above +inf, so
// it propagates NaN by itself (one integer max where the float one needs a compare and a blend
// too). The float of the largest lane's bits is then the block's q8_absmax / q8_max (for a
// root, which is >= 0 or NaN, taking |x| changes nothing), or a NaN where that is NaN, which
// q8_scale_* treat alike. Start from U(0u); the loops' scalar tails go on with uint32_t.
template <class V, class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U q8_absmax_bits(U acc, V x) {
  return vmax_u32(acc, vbits(vabs(x)));
}

template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V q8_decode_signed(V code, float scale) {
  return code * bcast<V>(scale);
}
template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V q8_decode_sqrt(V code, float scale) {
  const V root = (code + bcast<V>(1.0f)) * bcast<V>(scale);
  return root * root;
}

// Codes (int32 in uint32 lanes) of a finite m, and of a finite root = sqrt(v), with 16 random
// bits r: floor(x * inv + r / 2^16) computed exactly as floor((floor(x * inv * 2^16) + r) / 2^16)
// (x * inv * 2^16 = fl(x * inv16) is below 2^24 in magnitude; scaling by 2^16 is exact).
template <class V, class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U q8_encode_signed(V m, float inv16, U r) {
  return vclamp_int(vsar16(vfloor_int(m * bcast<V>(inv16)) + r), -127, 127);
}
template <class V, class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U q8_encode_sqrt(V root, float inv16, U r) {
  return vclamp_int(vsar16(vfloor_int(root * bcast<V>(inv16)) + r) + U(0xFFFFFFFFu), 0, 255);
}

}  // namespace math
}  // namespace pyoptim
