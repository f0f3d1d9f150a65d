// 128-bit vector types for the NEON (AArch64 Advanced SIMD) level. Included only by
// csrc/cpu/isa_neon.cpp. Same interface as vec_scalar.h / vec_avx2.h / vec_avx512.h. Each
// operation is the correctly rounded IEEE operation of the scalar math, lane by lane: fadd, fsub,
// fmul, fdiv, fsqrt, and fmla only where the math calls vfma (the build has -ffp-contract=off).
// The NaN-propagating max and the 16-bit conversions are written so every input, NaN and signed
// zero included, gives the scalar level's bits. See Note [Bitwise agreement across paths] in
// math/adam.h; tests/cross/neon_vs_scalar.cpp checks it under qemu (tools/cross_test.sh).
#pragma once

#include <arm_neon.h>

#include "pyoptim/cpu/dtypes.h"

namespace pyoptim {
namespace cpu {
namespace neon {

struct VecF {
  float32x4_t v;
  static constexpr int kSize = 4;
  VecF() = default;
  PYOPTIM_INLINE VecF(float32x4_t x) : v(x) {}
  PYOPTIM_INLINE VecF(float s) : v(vdupq_n_f32(s)) {}
};
struct VecD {
  float64x2_t v;
  static constexpr int kSize = 2;
  VecD() = default;
  PYOPTIM_INLINE VecD(float64x2_t x) : v(x) {}
  PYOPTIM_INLINE VecD(double s) : v(vdupq_n_f64(s)) {}
};

PYOPTIM_INLINE VecF operator+(VecF a, VecF b) { return vaddq_f32(a.v, b.v); }
PYOPTIM_INLINE VecF operator-(VecF a, VecF b) { return vsubq_f32(a.v, b.v); }
PYOPTIM_INLINE VecF operator*(VecF a, VecF b) { return vmulq_f32(a.v, b.v); }
PYOPTIM_INLINE VecF operator/(VecF a, VecF b) { return vdivq_f32(a.v, b.v); }
PYOPTIM_INLINE VecF operator-(VecF a) { return vnegq_f32(a.v); }  // -x: flips the sign bit only
PYOPTIM_INLINE VecF vsqrt(VecF a) { return vsqrtq_f32(a.v); }
// (a != a) ? a : (b != b) ? b : (a > b ? a : b), as selects: fmax would return +0 for
// max(+0, -0) (the scalar expression gives b) and quiet a signalling NaN the scalar returns as is.
PYOPTIM_INLINE VecF vmax_nan(VecF a, VecF b) {
  const float32x4_t gt = vbslq_f32(vcgtq_f32(a.v, b.v), a.v, b.v);  // a > b ? a : b
  return vbslq_f32(vceqq_f32(a.v, a.v), gt, a.v);                     // a is NaN: a
}

// x finite ? a : b, as scalar_ops.h's vselect_finite
PYOPTIM_INLINE VecF vselect_finite(VecF x, VecF a, VecF b) {
  return vbslq_f32(vceqq_f32(vsubq_f32(x.v, x.v), vdupq_n_f32(0.0f)), a.v, b.v);
}

PYOPTIM_INLINE VecD operator+(VecD a, VecD b) { return vaddq_f64(a.v, b.v); }
PYOPTIM_INLINE VecD operator-(VecD a, VecD b) { return vsubq_f64(a.v, b.v); }
PYOPTIM_INLINE VecD operator*(VecD a, VecD b) { return vmulq_f64(a.v, b.v); }
PYOPTIM_INLINE VecD operator/(VecD a, VecD b) { return vdivq_f64(a.v, b.v); }
PYOPTIM_INLINE VecD operator-(VecD a) { return vnegq_f64(a.v); }
PYOPTIM_INLINE VecD vsqrt(VecD a) { return vsqrtq_f64(a.v); }
PYOPTIM_INLINE VecD vmax_nan(VecD a, VecD b) {
  const float64x2_t gt = vbslq_f64(vcgtq_f64(a.v, b.v), a.v, b.v);
  return vbslq_f64(vceqq_f64(a.v, a.v), gt, a.v);
}

// |x|: clears the sign bit, NaN stays NaN (fabs, as scalar_ops.h's vabs).
PYOPTIM_INLINE VecF vabs(VecF a) { return vabsq_f32(a.v); }
PYOPTIM_INLINE VecD vabs(VecD a) { return vabsq_f64(a.v); }

// a * b + c with one rounding (fmla), as scalar_ops.h's vfma.
PYOPTIM_INLINE VecF vfma(VecF a, VecF b, VecF c) { return vfmaq_f32(c.v, a.v, b.v); }
PYOPTIM_INLINE VecD vfma(VecD a, VecD b, VecD c) { return vfmaq_f64(c.v, a.v, b.v); }

// uint32 lanes for the counter-based random bits of stochastic rounding
// (math/stochastic_round.h): wrapping add and multiply (low 32 bits), xor, logical shift.
struct VecU {
  uint32x4_t v;
  static constexpr int kSize = 4;
  VecU() = default;
  PYOPTIM_INLINE VecU(uint32x4_t x) : v(x) {}
  PYOPTIM_INLINE VecU(uint32_t s) : v(vdupq_n_u32(s)) {}
};
PYOPTIM_INLINE VecU operator+(VecU a, VecU b) { return vaddq_u32(a.v, b.v); }
PYOPTIM_INLINE VecU operator*(VecU a, VecU b) { return vmulq_u32(a.v, b.v); }
PYOPTIM_INLINE VecU operator^(VecU a, VecU b) { return veorq_u32(a.v, b.v); }
template <int N>
PYOPTIM_INLINE VecU vshr(VecU a) {
  return vshrq_n_u32(a.v, N);
}
PYOPTIM_INLINE VecU vbits(VecF x) { return vreinterpretq_u32_f32(x.v); }
// x is NaN ? if_nan : otherwise, lane by lane
PYOPTIM_INLINE VecU vselect_nan(VecF x, VecU if_nan, VecU otherwise) {
  return vbslq_u32(vceqq_f32(x.v, x.v), otherwise.v, if_nan.v);
}
// base, base + 1, base + 2, base + 3
PYOPTIM_INLINE VecU viota(uint32_t base) {
  const uint32_t lanes[4] = {0, 1, 2, 3};
  return vaddq_u32(vdupq_n_u32(base), vld1q_u32(lanes));
}


// ---- 8-bit optimizer states (math/quantize.h): int32 values in VecU lanes --------------------
PYOPTIM_INLINE VecU operator&(VecU a, VecU b) { return vandq_u32(a.v, b.v); }
PYOPTIM_INLINE VecU vlow16(VecU a) { return vandq_u32(a.v, vdupq_n_u32(0xFFFFu)); }
PYOPTIM_INLINE VecU vfloor_int(VecF x) { return vreinterpretq_u32_s32(vcvtmq_s32_f32(x.v)); }
PYOPTIM_INLINE VecU vsar16(VecU a) {
  return vreinterpretq_u32_s32(vshrq_n_s32(vreinterpretq_s32_u32(a.v), 16));
}
PYOPTIM_INLINE VecU vclamp_int(VecU a, int32_t lo, int32_t hi) {
  const int32x4_t x = vreinterpretq_s32_u32(a.v);
  return vreinterpretq_u32_s32(vminq_s32(vmaxq_s32(x, vdupq_n_s32(lo)), vdupq_n_s32(hi)));
}
// 4 codes, widened exactly to floats
PYOPTIM_INLINE VecF vload_code(const int8_t* p) {
  const int8_t b[8] = {p[0], p[1], p[2], p[3], 0, 0, 0, 0};
  return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vld1_s8(b)))));
}
PYOPTIM_INLINE VecF vload_code(const uint8_t* p) {
  const uint8_t b[8] = {p[0], p[1], p[2], p[3], 0, 0, 0, 0};
  return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vld1_u8(b)))));
}
// 4 int32 codes in the code's range, stored as bytes
PYOPTIM_INLINE void vstore_code(int8_t* p, VecU c) {
  const uint16x4_t w = vmovn_u32(c.v);
  uint8_t b[8];
  vst1_u8(b, vmovn_u16(vcombine_u16(w, w)));
  for (int k = 0; k < 4; ++k) p[k] = static_cast<int8_t>(b[k]);
}
PYOPTIM_INLINE void vstore_code(uint8_t* p, VecU c) {
  const uint16x4_t w = vmovn_u32(c.v);
  uint8_t b[8];
  vst1_u8(b, vmovn_u16(vcombine_u16(w, w)));
  for (int k = 0; k < 4; ++k) p[k] = b[k];
}
// 4 x 4 int32 codes in the code's range, stored as 16 bytes in order (narrowed, exact in range)
PYOPTIM_INLINE uint8x16_t code_bytes4(const VecU* c) {
  const uint16x8_t lo = vcombine_u16(vmovn_u32(c[0].v), vmovn_u32(c[1].v));
  const uint16x8_t hi = vcombine_u16(vmovn_u32(c[2].v), vmovn_u32(c[3].v));
  return vcombine_u8(vmovn_u16(lo), vmovn_u16(hi));
}
PYOPTIM_INLINE void vstore_codes4(int8_t* p, const VecU* c) {
  vst1q_s8(p, vreinterpretq_s8_u8(code_bytes4(c)));
}
PYOPTIM_INLINE void vstore_codes4(uint8_t* p, const VecU* c) { vst1q_u8(p, code_bytes4(c)); }
// block maxima on float bits (math::q8_absmax_bits): unsigned max, and the largest lane
PYOPTIM_INLINE VecU vmax_u32(VecU a, VecU b) { return vmaxq_u32(a.v, b.v); }
PYOPTIM_INLINE uint32_t vhmax_u32(VecU a) { return vmaxvq_u32(a.v); }

template <class S>
struct VecOf {
  using type = VecF;
  static constexpr int kSize = 4;
};
template <>
struct VecOf<double> {
  using type = VecD;
  static constexpr int kSize = 2;
};

PYOPTIM_INLINE VecF vload(const float* p) { return vld1q_f32(p); }
PYOPTIM_INLINE VecD vload(const double* p) { return vld1q_f64(p); }
// bfloat16 -> float: the 16 bits become the high half of the float.
PYOPTIM_INLINE VecF vload(const bf16* p) {
  return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p)), 16));
}
// half -> float, exact (fcvtl) for every finite value and infinity. A NaN keeps its sign and
// payload with the quiet bit as it was (to_opmath's bits, where fcvtl would set the quiet bit).
PYOPTIM_INLINE VecF vload(const fp16* p) {
  const uint16x4_t h = vld1_u16(reinterpret_cast<const uint16_t*>(p));
  const float32x4_t f = vcvt_f32_f16(vreinterpret_f16_u16(h));
  const uint32x4_t w = vmovl_u16(h);
  const uint32x4_t nan_bits =  // sign | 0x7f800000 | mant << 13
      vorrq_u32(vorrq_u32(vshlq_n_u32(vandq_u32(w, vdupq_n_u32(0x8000u)), 16),
                          vdupq_n_u32(0x7f800000u)),
                vshlq_n_u32(vandq_u32(w, vdupq_n_u32(0x3ffu)), 13));
  const uint32x4_t is_nan = vcgtq_u32(vandq_u32(w, vdupq_n_u32(0x7fffu)), vdupq_n_u32(0x7c00u));
  return vreinterpretq_f32_u32(vbslq_u32(is_nan, nan_bits, vreinterpretq_u32_f32(f)));
}

PYOPTIM_INLINE void vstore(float* p, VecF x) { vst1q_f32(p, x.v); }
PYOPTIM_INLINE void vstore(double* p, VecD x) { vst1q_f64(p, x.v); }
// float -> bfloat16 bits, round to nearest even, NaN -> 0x7FC0 (as from_opmath<bf16>), in the
// low half of each 32-bit lane.
PYOPTIM_INLINE uint32x4_t bf16_bits(VecF x) {
  const uint32x4_t u = vreinterpretq_u32_f32(x.v);
  const uint32x4_t bias =
      vaddq_u32(vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1)), vdupq_n_u32(0x7FFFu));
  const uint32x4_t r = vshrq_n_u32(vaddq_u32(u, bias), 16);
  return vbslq_u32(vceqq_f32(x.v, x.v), r, vdupq_n_u32(0x7FC0u));
}
PYOPTIM_INLINE void vstore(bf16* p, VecF x) {
  vst1_u16(reinterpret_cast<uint16_t*>(p), vmovn_u32(bf16_bits(x)));
}
// The low 16 bits of each lane (bfloat16 bits, each < 2^16) stored as 4 bfloat16.
PYOPTIM_INLINE void vstore_bits(bf16* p, VecU r) {
  vst1_u16(reinterpret_cast<uint16_t*>(p), vmovn_u32(r.v));
}
// float -> half, round to nearest even (fcvtn, the default rounding mode), overflow to infinity,
// subnormal halves rounded once: from_opmath<fp16>'s bits for every non-NaN float. A NaN gets
// from_opmath's sign | 0x7e00 | the top payload bits, written out here (fcvtn's NaN is the same
// on AArch64; the select keeps that a property of this file, not of the FPCR's DN bit).
PYOPTIM_INLINE void vstore(fp16* p, VecF x) {
  const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(x.v));
  const uint32x4_t u = vreinterpretq_u32_f32(x.v);
  const uint16x4_t sign = vmovn_u32(vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x8000u)));
  const uint16x4_t payload = vmovn_u32(vandq_u32(vshrq_n_u32(u, 13), vdupq_n_u32(0x3ffu)));
  const uint16x4_t nan_bits = vorr_u16(vorr_u16(sign, vdup_n_u16(0x7e00u)), payload);
  const uint16x4_t is_num = vmovn_u32(vceqq_f32(x.v, x.v));
  vst1_u16(reinterpret_cast<uint16_t*>(p), vbsl_u16(is_num, h, nan_bits));
}

// Paired bfloat16 access: one full register of bfloat16 as two float vectors (elements 0-3 and
// 4-7, in order), where bfloat16 steps are compute-bound (see vec_avx2.h).
template <class S>
struct HasPaired {
  static constexpr bool value = false;
};
template <>
struct HasPaired<bf16> {
  static constexpr bool value = true;
};
PYOPTIM_INLINE void vload2(const bf16* p, VecF& a, VecF& b) {
  const uint16x8_t x = vld1q_u16(reinterpret_cast<const uint16_t*>(p));
  a = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(x), 16));
  b = vreinterpretq_f32_u32(vshll_high_n_u16(x, 16));
}
PYOPTIM_INLINE void vstore2(bf16* p, VecF a, VecF b) {
  vst1q_u16(reinterpret_cast<uint16_t*>(p), vmovn_high_u32(vmovn_u32(bf16_bits(a)), bf16_bits(b)));
}

}  // namespace neon
}  // namespace cpu
}  // namespace pyoptim
