// Stochastic rounding of float32 to bfloat16, and the counter-based random bits it uses. One
// definition for every path: the CPU SIMD body (V a float vector, U its uint32 vector), the CPU
// scalar tail and device code (V = float, U = uint32_t: adam_'s and sgd_'s CUDA kernels in
// cuda/adam_mixed_kernels.cuh and cuda/sgd_mixed_kernels.cuh).
//
// Note [Master weights and stochastic rounding]
// Two opt-in modes for 16-bit params, chosen per param group (the op's `flags` gain
// master_weights and, for adam_, stochastic_rounding; the Python classes store them as
// constructor kwargs in the param groups, off by default, so the default is torch's behaviour;
// pyoptim/_mixed.py):
//
//  * master_weights (bfloat16 or float16 params): the state holds `master_param`, a float32
//    copy of the param, and exp_avg / exp_avg_sq / max_exp_avg_sq in float32. One pass per
//    element reads the 16-bit grad and the float32 master and moments, runs math::adam_step on
//    the master in float32 (the same math, coefficients and bits as a float32 param would get),
//    and stores master, moments and the param rounded to nearest even from the new master:
//    2 (grad) + 3 x 8 (master, exp_avg, exp_avg_sq read and written) + 2 (param) = 28 bytes per
//    element, what float32 Adam moves, with no separate cast pass. The op's `master_params`
//    holds one tensor per param of such groups (as max_exp_avg_sqs does for amsgrad groups).
//    sgd_ has the same mode for groups with momentum (dense grads): float32 master and buffer,
//    math::sgd_step on the master, 2 + 8 + 8 + 2 = 20 bytes per element.
//  * stochastic_rounding (bfloat16 params, without master weights): the state stays torch's
//    (bfloat16 moments, stored rounded to nearest as torch stores them); only the param's store
//    rounds stochastically: a float32 x between the neighbouring bfloat16 values lo < x < hi
//    becomes hi with probability (x - lo) / (hi - lo), so E[round(x)] = x, and an update
//    smaller than half a bfloat16 ulp still moves the param on average instead of being lost.
//    The op's `sr_seeds` holds one int64 CPU tensor per param of such groups, the seed
//    (state["sr_seed"], drawn from torch's generator when the state is created). sgd_ has the
//    same mode for groups with momentum; SGD keeps no step count, so its key is
//    sr_key(seed, 0, ...) and the op adds one to the seed after each step it takes.
//
// The rounding (round_bf16_stochastic): add 16 random bits r (uniform in [0, 2^16)) to the
// float32 bit pattern and keep its high 16 bits. The low 16 bits of the pattern are the position
// of x between its two bfloat16 neighbours in units of 2^-16 of their spacing (in sign-magnitude,
// for either sign, subnormals included: the encoding is monotone in |x|), so the carry into bit
// 16 happens with exactly probability (low bits) / 2^16. Exact values (low bits 0) never move.
// Infinity (low bits 0) stays infinity. A finite x above the largest bfloat16 rounds up to
// infinity with that probability, the IEEE view in which infinity follows the largest finite
// value (round-to-nearest overflows the same way past half an ulp). NaN needs a select: adding
// to a NaN pattern can carry into the sign bit (0x7FFFFFFF + r) or wrap (0xFFFFFFFF + r) and give
// a zero, so a NaN is stored as 0x7FC0, the NaN that rounding to nearest stores (from_opmath).
//
// The random bits: a pure function of (seed, step, element index), so every ISA level, every
// thread split, the scalar tail and device code draw the same bits for the same element, and a
// run resumed from a checkpoint (which holds the seed and the step) continues the same stream.
// For element i of a tensor at step t (the step count after the increment, the one bias
// correction uses):
//     key  = sr_key(seed, t, i >> 32)                (per tensor, step and 2^32-element block)
//     bits = mix32(mix32(uint32(i) ^ key.a) ^ key.b)
//     r    = bits >> 16
// mix32 is the `lowbias32` integer hash (Chris Wellons' hash prospector: xor-shift, multiply,
// xor-shift, multiply, xor-shift; two 32-bit multiplies), sr_key splitmix64's finalizer. Why a
// counter hash and not Philox: the rounding needs 16 bits per element that are uniform and
// independent of the update's value, not a cryptographic or long-period stream. mix32 is a
// bijection of uint32, so over a 2^32 block the bits are a permutation of all 2^32 values: the
// high 16 bits are exactly uniform over the block, and no two elements of a block share their
// bits. Each step and tensor gets a new 64-bit key, so one element's draws across steps are
// as independent as splitmix64's outputs. It costs 5 integer operations per mix and 32-bit
// multiplies that every level has (vpmulld, vmulq_u32, CUDA's mul.lo), where Philox-4x32-10
// needs ten rounds of 32x32 -> 64-bit multiplies. tests/test_master.py checks the mean of the
// rounding error against a bound derived from its variance.
#pragma once

#include <cstdint>

#include "pyoptim/macros.h"
#include "pyoptim/math/scalar_ops.h"

#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

namespace pyoptim {
namespace math {

// The uint32 primitives, for scalars (the SIMD vector types give the same names).
template <int N>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vshr(uint32_t x) {
  return x >> N;
}
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vbits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}
// x is NaN ? if_nan : otherwise
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint32_t vselect_nan(float x, uint32_t if_nan,
                                                        uint32_t otherwise) {
  return x != x ? if_nan : otherwise;
}

// splitmix64's finalizer.
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ull;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z;
}

struct SrKey {
  uint32_t a, b;
};

// The key of one tensor at one step, for its elements [block * 2^32, (block + 1) * 2^32).
// `stream` 0: the param's bits; math/quantize.h's kStateStream: its moments'.
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE SrKey sr_key(uint64_t seed, uint64_t step, uint64_t block,
                                                uint64_t stream = 0) {
  const uint64_t z = mix64(mix64(seed) + step * 0x9E3779B97F4A7C15ull +
                           block * 0xD1B54A32D192ED03ull + stream * 0x8CB92BA72F3D8DD7ull);
  return SrKey{static_cast<uint32_t>(z), static_cast<uint32_t>(z >> 32)};
}

// lowbias32: a bijection of uint32 with good avalanche.
template <class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U mix32(U x) {
  x = x ^ vshr<16>(x);
  x = x * U(0x7FEB352Du);
  x = x ^ vshr<15>(x);
  x = x * U(0x846CA68Bu);
  x = x ^ vshr<16>(x);
  return x;
}

// 16 random bits (in [0, 2^16)) for the element whose index has low 32 bits `lo`.
template <class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U sr_random16(U lo, const SrKey& k) {
  return vshr<16>(mix32(mix32(lo ^ U(k.a)) ^ U(k.b)));
}

// Note [Kahan-compensated 16-bit params]
// kahan_summation=True (adam_ and sgd_, bfloat16 or float16 params, without master weights):
// the state holds `kahan_comp`, a tensor of the param's dtype carrying what rounding the param
// to 16 bits lost (torch-optimi's compensation buffer). Per element, in float32, with p the
// stored param, q the param after the optimizer's step on p (math::adam_step, math::sgd_step)
// and c the compensation:
//     y = (q - p) + c          the step plus what earlier roundings lost
//     t = p + y                the new param, stored rounded to nearest: p' = round(t)
//     c' = y - (p' - p)        what this rounding lost, stored rounded to nearest
// (p' - p is exact in float32 unless p and p' differ by a factor above 2^15: then the step is
// the whole story and c' only loses what is below its rounding). Infinity and NaN are stored as
// torch stores them: where q is not finite (an infinite or NaN param, or a step that
// overflowed float32) the new param is q itself, t = q, and where the stored p' is not finite
// (q, or t above the 16-bit range) c' = 0, so an infinite param stays infinite at later steps
// (y = inf - inf would make it NaN). 2 bytes more read and written
// per element than torch's 16-bit step (Adam 18 B against 14; SGD 14 against 10 with momentum,
// 10 against 6 without), no random bits. SGD takes it without momentum too: plain 16-bit SGD is
// where updates below half an ulp are lost, and there c is the param's only state. The store,
// shared by both ops: kahan_store (cpu/adam_impl.h: p' read back from the store), called by
// adam_kahan_loop and SgdDenseKahan (cpu/sgd_impl.h); kahan_store (cuda/mixed_launch.cuh: p'
// widened from the register it was rounded in; the same bits), called by KahanOp
// (cuda/adam_mixed_kernels.cuh) and SgdKahanOp (cuda/sgd_mixed_kernels.cuh).
template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V kahan_sum(V p, V q, V c) {
  return (q - p) + c;
}
template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V kahan_total(V p, V q, V y) {  // t, before its rounding
  return vselect_finite(q, p + y, q);
}
template <class V>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V kahan_residual(V y, V p, V stored) {
  return vselect_finite(stored, y - (stored - p), bcast<V>(0.0f));
}

// float32 -> bfloat16 bits (in the low 16 bits of each lane), rounded stochastically with the
// random bits r in [0, 2^16). See the Note.
template <class V, class U>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE U round_bf16_stochastic(V x, U r) {
  const U rounded = vshr<16>(vbits(x) + r);  // add the random low bits, truncate
  return vselect_nan(x, U(0x7FC0u), rounded);  // NaN: rounding to nearest's NaN
}

}  // namespace math
}  // namespace pyoptim
