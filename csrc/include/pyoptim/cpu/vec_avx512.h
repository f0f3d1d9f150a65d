// 512-bit vector types for the AVX-512 (F/BW/VL/DQ) level. Included only by
// csrc/cpu/isa_avx512.cpp. Each operation is the correctly rounded IEEE operation of the scalar
// math, lane by lane. See Note [Bitwise agreement across paths] in math/adam.h.
#pragma once

#include <immintrin.h>

#include "pyoptim/cpu/dtypes.h"

namespace pyoptim {
namespace cpu {
namespace avx512 {

struct VecF {
  __m512 v;
  static constexpr int kSize = 16;
  VecF() = default;
  PYOPTIM_INLINE VecF(__m512 x) : v(x) {}
  PYOPTIM_INLINE VecF(float s) : v(_mm512_set1_ps(s)) {}
};
struct VecD {
  __m512d v;
  static constexpr int kSize = 8;
  VecD() = default;
  PYOPTIM_INLINE VecD(__m512d x) : v(x) {}
  PYOPTIM_INLINE VecD(double s) : v(_mm512_set1_pd(s)) {}
};

PYOPTIM_INLINE VecF operator+(VecF a, VecF b) { return _mm512_add_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator-(VecF a, VecF b) { return _mm512_sub_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator*(VecF a, VecF b) { return _mm512_mul_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator/(VecF a, VecF b) { return _mm512_div_ps(a.v, b.v); }
PYOPTIM_INLINE VecF operator-(VecF a) {  // -x
  return _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(int(0x80000000u))));
}
PYOPTIM_INLINE VecF vsqrt(VecF a) { return _mm512_sqrt_ps(a.v); }
// (a != a) ? a : (b != b) ? b : (a > b ? a : b);   max_ps returns b when either is NaN
PYOPTIM_INLINE VecF vmax_nan(VecF a, VecF b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_max_ps(a.v, b.v),
                              a.v);
}

// x finite ? a : b, as scalar_ops.h's vselect_finite
PYOPTIM_INLINE VecF vselect_finite(VecF x, VecF a, VecF b) {
  const __m512 zero = _mm512_setzero_ps();
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_sub_ps(x.v, x.v), zero, _CMP_EQ_OQ), b.v,
                              a.v);
}

PYOPTIM_INLINE VecD operator+(VecD a, VecD b) { return _mm512_add_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator-(VecD a, VecD b) { return _mm512_sub_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator*(VecD a, VecD b) { return _mm512_mul_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator/(VecD a, VecD b) { return _mm512_div_pd(a.v, b.v); }
PYOPTIM_INLINE VecD operator-(VecD a) {
  return _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(a.v),
                                              _mm512_set1_epi64((long long)0x8000000000000000ull)));
}
PYOPTIM_INLINE VecD vsqrt(VecD a) { return _mm512_sqrt_pd(a.v); }
PYOPTIM_INLINE VecD vmax_nan(VecD a, VecD b) {
  return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_max_pd(a.v, b.v),
                              a.v);
}

PYOPTIM_INLINE VecF vabs(VecF a) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), a.v); }
PYOPTIM_INLINE VecD vabs(VecD a) { return _mm512_andnot_pd(_mm512_set1_pd(-0.0), a.v); }

// a * b + c with one rounding (fmadd), as scalar_ops.h's vfma.
PYOPTIM_INLINE VecF vfma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
PYOPTIM_INLINE VecD vfma(VecD a, VecD b, VecD c) { return _mm512_fmadd_pd(a.v, b.v, c.v); }

// uint32 lanes for the counter-based random bits of stochastic rounding
// (math/stochastic_round.h): wrapping add and multiply (low 32 bits), xor, logical shift.
struct VecU {
  __m512i v;
  static constexpr int kSize = 16;
  VecU() = default;
  PYOPTIM_INLINE VecU(__m512i x) : v(x) {}
  PYOPTIM_INLINE VecU(uint32_t s) : v(_mm512_set1_epi32(int(s))) {}
};
PYOPTIM_INLINE VecU operator+(VecU a, VecU b) { return _mm512_add_epi32(a.v, b.v); }
PYOPTIM_INLINE VecU operator*(VecU a, VecU b) { return _mm512_mullo_epi32(a.v, b.v); }
PYOPTIM_INLINE VecU operator^(VecU a, VecU b) { return _mm512_xor_si512(a.v, b.v); }
template <int N>
PYOPTIM_INLINE VecU vshr(VecU a) {
  return _mm512_srli_epi32(a.v, N);
}
PYOPTIM_INLINE VecU vbits(VecF x) { return _mm512_castps_si512(x.v); }
// x is NaN ? if_nan : otherwise, lane by lane
PYOPTIM_INLINE VecU vselect_nan(VecF x, VecU if_nan, VecU otherwise) {
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q), otherwise.v,
                                 if_nan.v);
}
// base, base + 1, ..., base + 15
PYOPTIM_INLINE VecU viota(uint32_t base) {
  return _mm512_add_epi32(_mm512_set1_epi32(int(base)),
                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}


// ---- 8-bit optimizer states (math/quantize.h): int32 values in VecU lanes --------------------
PYOPTIM_INLINE VecU operator&(VecU a, VecU b) { return _mm512_and_si512(a.v, b.v); }
PYOPTIM_INLINE VecU vlow16(VecU a) { return _mm512_and_si512(a.v, _mm512_set1_epi32(0xFFFF)); }
PYOPTIM_INLINE VecU vfloor_int(VecF x) {
  return _mm512_cvt_roundps_epi32(x.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
}
PYOPTIM_INLINE VecU vsar16(VecU a) { return _mm512_srai_epi32(a.v, 16); }
PYOPTIM_INLINE VecU vclamp_int(VecU a, int32_t lo, int32_t hi) {
  return _mm512_min_epi32(_mm512_max_epi32(a.v, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
}
// 16 codes, widened exactly to floats
PYOPTIM_INLINE VecF vload_code(const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
PYOPTIM_INLINE VecF vload_code(const uint8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// 16 int32 codes in the code's range, stored as bytes
PYOPTIM_INLINE void vstore_code(int8_t* p, VecU c) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(c.v));
}
PYOPTIM_INLINE void vstore_code(uint8_t* p, VecU c) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(c.v));
}
// 4 x 16 int32 codes in the code's range, stored as 64 bytes in order: two packs to 16 bits and
// one to 8 (saturating, so exact in range), which leave each 128-bit lane k holding c[0..3]'s
// k-th 4 codes, and one dword permute to put them in order: four instructions for four vectors,
// where vstore_code narrows each on its own
PYOPTIM_INLINE __m512i code_order4(__m512i x) {
  return _mm512_permutexvar_epi32(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), x);
}
PYOPTIM_INLINE void vstore_codes4(int8_t* p, const VecU* c) {
  const __m512i x = _mm512_packs_epi16(_mm512_packs_epi32(c[0].v, c[1].v),
                                       _mm512_packs_epi32(c[2].v, c[3].v));
  _mm512_storeu_si512(p, code_order4(x));
}
PYOPTIM_INLINE void vstore_codes4(uint8_t* p, const VecU* c) {
  const __m512i x = _mm512_packus_epi16(_mm512_packus_epi32(c[0].v, c[1].v),
                                        _mm512_packus_epi32(c[2].v, c[3].v));
  _mm512_storeu_si512(p, code_order4(x));
}
// block maxima on float bits (math::q8_absmax_bits): unsigned max, and the largest lane
PYOPTIM_INLINE VecU vmax_u32(VecU a, VecU b) { return _mm512_max_epu32(a.v, b.v); }
PYOPTIM_INLINE uint32_t vhmax_u32(VecU a) { return _mm512_reduce_max_epu32(a.v); }

template <class S>
struct VecOf {
  using type = VecF;
  static constexpr int kSize = 16;
};
template <>
struct VecOf<double> {
  using type = VecD;
  static constexpr int kSize = 8;
};

PYOPTIM_INLINE VecF vload(const float* p) { return _mm512_loadu_ps(p); }
PYOPTIM_INLINE VecD vload(const double* p) { return _mm512_loadu_pd(p); }
// bfloat16 -> float: the 16 bits become the high half of the float.
PYOPTIM_INLINE VecF vload(const bf16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
PYOPTIM_INLINE VecF vload(const fp16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

PYOPTIM_INLINE void vstore(float* p, VecF x) { _mm512_storeu_ps(p, x.v); }
PYOPTIM_INLINE void vstore(double* p, VecD x) { _mm512_storeu_pd(p, x.v); }
// float -> bfloat16 bits, round to nearest even, NaN -> 0x7FC0 (as from_opmath<bf16>), in the
// low half of each 32-bit lane: (u + 0x7FFF + bit 16 of u) >> 16, the bias chosen by a mask and
// the NaN lanes merged into the shift (5 instructions, where bfloat16 steps are compute-bound).
PYOPTIM_INLINE __m512i bf16_bits(VecF x) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __mmask16 odd = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x10000));
  const __m512i t = _mm512_add_epi32(
      u, _mm512_mask_blend_epi32(odd, _mm512_set1_epi32(0x7FFF), _mm512_set1_epi32(0x8000)));
  return _mm512_mask_srli_epi32(_mm512_set1_epi32(0x7FC0),
                                _mm512_cmp_ps_mask(x.v, x.v, _CMP_ORD_Q), t, 16);
}
PYOPTIM_INLINE void vstore(bf16* p, VecF x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(x)));
}
// The low 16 bits of each lane (bfloat16 bits, each < 2^16) stored as 16 bfloat16.
PYOPTIM_INLINE void vstore_bits(bf16* p, VecU r) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r.v));
}
PYOPTIM_INLINE void vstore(fp16* p, VecF x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}


// Paired bfloat16 access: one full register of bfloat16 as two float vectors. unpacklo/hi put
// the elements in an interleaved lane order that packus in vstore2 undoes exactly; the math is
// element-wise and every array of a step uses the same order, so elements never mix. Half the
// conversion instructions of vload/vstore, where bfloat16 steps are compute-bound.
template <class S>
struct HasPaired {
  static constexpr bool value = false;
};
template <>
struct HasPaired<bf16> {
  static constexpr bool value = true;
};
PYOPTIM_INLINE void vload2(const bf16* p, VecF& a, VecF& b) {
  const __m512i x = _mm512_loadu_si512(p);
  const __m512i z = _mm512_setzero_si512();
  a = _mm512_castsi512_ps(_mm512_unpacklo_epi16(z, x));  // bf16 bits in the high half
  b = _mm512_castsi512_ps(_mm512_unpackhi_epi16(z, x));
}
PYOPTIM_INLINE void vstore2(bf16* p, VecF a, VecF b) {
  _mm512_storeu_si512(reinterpret_cast<__m512i*>(p),
                      _mm512_packus_epi32(bf16_bits(a), bf16_bits(b)));
}

}  // namespace avx512
}  // namespace cpu
}  // namespace pyoptim
