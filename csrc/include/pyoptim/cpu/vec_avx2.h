// 256-bit vector types for the AVX2 (+FMA, F16C) level. Included only by csrc/cpu/isa_avx2.cpp.
// Each operation is the correctly rounded IEEE operation of the scalar math, lane by lane.
// See Note [Bitwise agreement across paths] in math/adam.h.
#pragma once

#include <immintrin.h>

#include "pyoptim/cpu/dtypes.h"

namespace pyoptim {
namespace cpu {
namespace avx2 {

struct VecF {
  __m256 v;
  static constexpr int kSize = 8;
  VecF() = default;
  PYOPTIM_INLINE VecF(__m256 x) : v(x) {}
  PYOPTIM_INLINE VecF(float s) : v(_mm256_set1_ps(s)) {}
};
struct VecD {
  __m256d v;
  static constexpr int kSize = 4;
  VecD() = default;
  PYOPTIM_INLINE VecD(__m256d x) : v(x) {}
  PYOPTIM_INLINE VecD(double s) : v(_mm256_set1_pd(s)) {}
};

PYOPTIM_INLINE VecF operator+(VecF a, VecF b) { return _mm256_add_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator-(VecF a, VecF b) { return _mm256_sub_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator*(VecF a, VecF b) { return _mm256_mul_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator/(VecF a, VecF b) { return _mm256_div_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator-(VecF a) { return _mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)); }  // -x
PYOPTIM_INLINE VecF vsqrt(VecF a) { return _mm256_sqrt_ps(a.v); }
// (a != a) ? a : (b != b) ? b : (a > b ? a : b);   max_ps returns b when either is NaN
PYOPTIM_INLINE VecF vmax_nan(VecF a, VecF b) {
  return _mm256_blendv_ps(_mm256_max_ps(a.v, b.v), a.v, _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
}

// x finite ? a : b, as scalar_ops.h's vselect_finite
PYOPTIM_INLINE VecF vselect_finite(VecF x, VecF a, VecF b) {
  const __m256 finite = _mm256_cmp_ps(_mm256_sub_ps(x.v, x.v), _mm256_setzero_ps(), _CMP_EQ_OQ);
  return _mm256_blendv_ps(b.v, a.v, finite);
}

PYOPTIM_INLINE VecD operator+(VecD a, VecD b) { return _mm256_add_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator-(VecD a, VecD b) { return _mm256_sub_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator*(VecD a, VecD b) { return _mm256_mul_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator/(VecD a, VecD b) { return _mm256_div_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator-(VecD a) { return _mm256_xor_pd(a.v, _mm256_set1_pd(-0.0)); }
PYOPTIM_INLINE VecD vsqrt(VecD a) { return _mm256_sqrt_pd(a.v); }
PYOPTIM_INLINE VecD vmax_nan(VecD a, VecD b) {
  return _mm256_blendv_pd(_mm256_max_pd(a.v, b.v), a.v, _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q));
}

PYOPTIM_INLINE VecF vabs(VecF a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
PYOPTIM_INLINE VecD vabs(VecD a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v); }

// a * b + c with one rounding (fmadd), as scalar_ops.h's vfma.
PYOPTIM_INLINE VecF vfma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
PYOPTIM_INLINE VecD vfma(VecD a, VecD b, VecD c) { return _mm256_fmadd_pd(a.v, b.v, c.v); }

// uint32 lanes for the counter-based random bits of stochastic rounding
// (math/stochastic_round.h): wrapping add and multiply (low 32 bits), xor, logical shift.
struct VecU {
  __m256i v;
  static constexpr int kSize = 8;
  VecU() = default;
  PYOPTIM_INLINE VecU(__m256i x) : v(x) {}
  PYOPTIM_INLINE VecU(uint32_t s) : v(_mm256_set1_epi32(int(s))) {}
};
PYOPTIM_INLINE VecU operator+(VecU a, VecU b) { return _mm256_add_epi32(a.v, b.v); }
PYOPTIM_INLINE VecU operator*(VecU a, VecU b) { return _mm256_mullo_epi32(a.v, b.v); }
PYOPTIM_INLINE VecU operator^(VecU a, VecU b) { return _mm256_xor_si256(a.v, b.v); }
template <int N>
PYOPTIM_INLINE VecU vshr(VecU a) {
  return _mm256_srli_epi32(a.v, N);
}
PYOPTIM_INLINE VecU vbits(VecF x) { return _mm256_castps_si256(x.v); }
// x is NaN ? if_nan : otherwise, lane by lane
PYOPTIM_INLINE VecU vselect_nan(VecF x, VecU if_nan, VecU otherwise) {
  return _mm256_blendv_epi8(otherwise.v, if_nan.v,
                            _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)));
}
// base, base + 1, ..., base + 7
PYOPTIM_INLINE VecU viota(uint32_t base) {
  return _mm256_add_epi32(_mm256_set1_epi32(int(base)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}


// ---- 8-bit optimizer states (math/quantize.h): int32 values in VecU lanes --------------------
PYOPTIM_INLINE VecU operator&(VecU a, VecU b) { return _mm256_and_si256(a.v, b.v); }
PYOPTIM_INLINE VecU vlow16(VecU a) { return _mm256_and_si256(a.v, _mm256_set1_epi32(0xFFFF)); }
PYOPTIM_INLINE VecU vfloor_int(VecF x) { return _mm256_cvtps_epi32(_mm256_floor_ps(x.v)); }
PYOPTIM_INLINE VecU vsar16(VecU a) { return _mm256_srai_epi32(a.v, 16); }
PYOPTIM_INLINE VecU vclamp_int(VecU a, int32_t lo, int32_t hi) {
  return _mm256_min_epi32(_mm256_max_epi32(a.v, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
}
// 8 codes, widened exactly to floats
PYOPTIM_INLINE VecF vload_code(const int8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
PYOPTIM_INLINE VecF vload_code(const uint8_t* p) {
  return _mm256_cvtepi32_ps(
      _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
// 8 int32 codes in the code's range, stored as bytes
PYOPTIM_INLINE __m128i code_words(VecU c) {  // 8 x int16
  return _mm_packs_epi32(_mm256_castsi256_si128(c.v), _mm256_extracti128_si256(c.v, 1));
}
PYOPTIM_INLINE void vstore_code(int8_t* p, VecU c) {
  const __m128i w = code_words(c);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w, w));
}
PYOPTIM_INLINE void vstore_code(uint8_t* p, VecU c) {
  const __m128i w = code_words(c);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
}
// 4 x 8 int32 codes in the code's range, stored as 32 bytes in order: two packs to 16 bits and
// one to 8 (saturating, so exact in range), which leave each 128-bit lane k holding c[0..3]'s
// k-th 4 codes, and one dword permute to put them in order
PYOPTIM_INLINE __m256i code_order4(__m256i x) {
  return _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
PYOPTIM_INLINE void vstore_codes4(int8_t* p, const VecU* c) {
  const __m256i x = _mm256_packs_epi16(_mm256_packs_epi32(c[0].v, c[1].v),
                                       _mm256_packs_epi32(c[2].v, c[3].v));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), code_order4(x));
}
PYOPTIM_INLINE void vstore_codes4(uint8_t* p, const VecU* c) {
  const __m256i x = _mm256_packus_epi16(_mm256_packus_epi32(c[0].v, c[1].v),
                                        _mm256_packus_epi32(c[2].v, c[3].v));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), code_order4(x));
}
// block maxima on float bits (math::q8_absmax_bits): unsigned max, and the largest lane
PYOPTIM_INLINE VecU vmax_u32(VecU a, VecU b) { return _mm256_max_epu32(a.v, b.v); }
PYOPTIM_INLINE uint32_t vhmax_u32(VecU a) {
  __m128i x = _mm_max_epu32(_mm256_castsi256_si128(a.v), _mm256_extracti128_si256(a.v, 1));
  x = _mm_max_epu32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2)));
  x = _mm_max_epu32(x, _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1)));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(x));
}

template <class S>
struct VecOf {
  using type = VecF;
  static constexpr int kSize = 8;
};
template <>
struct VecOf<double> {
  using type = VecD;
  static constexpr int kSize = 4;
};

PYOPTIM_INLINE VecF vload(const float* p) { return _mm256_loadu_ps(p); }
PYOPTIM_INLINE VecD vload(const double* p) { return _mm256_loadu_pd(p); }
// bfloat16 -> float: the 16 bits become the high half of the float.
PYOPTIM_INLINE VecF vload(const bf16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
PYOPTIM_INLINE VecF vload(const fp16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

PYOPTIM_INLINE void vstore(float* p, VecF x) { _mm256_storeu_ps(p, x.v); }
PYOPTIM_INLINE void vstore(double* p, VecD x) { _mm256_storeu_pd(p, x.v); }
// x rounded to nearest even to bfloat16, in the high half of each lane (u + 0x7FFF + bit 16 of
// u; the low half is left over). Not for NaN, which can round to infinity or carry into the sign.
PYOPTIM_INLINE __m256i bf16_round_high(VecF x) {
  const __m256i u = _mm256_castps_si256(x.v);
  return _mm256_add_epi32(
      u, _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)),
                          _mm256_set1_epi32(0x7FFF)));
}
// float -> bfloat16 bits, round to nearest even, NaN -> 0x7FC0 (as from_opmath<bf16>), in the
// low half of each 32-bit lane.
PYOPTIM_INLINE __m256i bf16_bits(VecF x) {
  const __m256i r = _mm256_srli_epi32(bf16_round_high(x), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
}
PYOPTIM_INLINE void vstore(bf16* p, VecF x) {
  const __m256i r = bf16_bits(x);
  // 8 x u32 (each < 2^16) -> 8 x u16: pack within 128-bit lanes, then gather lanes 0 and 2.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
// The low 16 bits of each lane (bfloat16 bits, each < 2^16) stored as 8 bfloat16.
PYOPTIM_INLINE void vstore_bits(bf16* p, VecU r) {
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r.v, r.v), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
PYOPTIM_INLINE void vstore(fp16* p, VecF x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT));
}


// Paired bfloat16 access: one full register of bfloat16 as two float vectors, `a` the elements
// at even positions, `b` those at odd ones (a shift and a mask apart: each 32-bit lane holds one
// of each). vstore2 blends them back into place; the math is element-wise and every array of a
// step uses the same order, so elements never mix. Half the conversion instructions of
// vload/vstore, where bfloat16 steps are compute-bound. vstore2 rounds without the NaN select
// and checks once per register for a NaN, which takes the exact path (bf16_bits).
template <class S>
struct HasPaired {
  static constexpr bool value = false;
};
template <>
struct HasPaired<bf16> {
  static constexpr bool value = true;
};
PYOPTIM_INLINE void vload2(const bf16* p, VecF& a, VecF& b) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  a = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  b = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xFFFF0000u))));
}
PYOPTIM_INLINE void vstore2(bf16* p, VecF a, VecF b) {
  __m256i r = _mm256_blend_epi16(_mm256_srli_epi32(bf16_round_high(a), 16), bf16_round_high(b),
                                 0xAA);
  const __m256 nan = _mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q);  // a or b NaN
  if (__builtin_expect(!_mm256_testz_ps(nan, nan), 0)) {
    r = _mm256_blend_epi16(bf16_bits(a), _mm256_slli_epi32(bf16_bits(b), 16), 0xAA);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), r);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace pyoptim
