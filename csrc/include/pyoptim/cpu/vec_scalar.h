// The "vector" types of the scalar level: one element, the math's own float / double.
// Included only by csrc/cpu/isa_scalar.cpp. Same interface as vec_avx2.h / vec_avx512.h /
// vec_neon.h.
#pragma once

#include "pyoptim/cpu/dtypes.h"

namespace pyoptim {
namespace cpu {
namespace scalar {

template <class S>
struct VecOf {
  using type = opmath_t<S>;
  static constexpr int kSize = 1;
};

template <class S>
PYOPTIM_INLINE opmath_t<S> vload(const S* p) {
  return to_opmath(*p);
}
template <class S>
PYOPTIM_INLINE void vstore(S* p, opmath_t<S> x) {
  *p = from_opmath<S>(x);
}

// uint32 "lanes" for stochastic rounding's random bits: plain uint32_t, whose operations and
// vshr / vbits / vselect_nan (math/stochastic_round.h) the math uses directly.
using VecU = uint32_t;
PYOPTIM_INLINE uint32_t viota(uint32_t base) { return base; }
PYOPTIM_INLINE void vstore_bits(bf16* p, uint32_t r) { p->x = static_cast<uint16_t>(r); }


// 8-bit optimizer states (math/quantize.h): codes widened to floats, and int32 codes (in
// uint32) stored as bytes.
PYOPTIM_INLINE float vload_code(const int8_t* p) { return static_cast<float>(*p); }
PYOPTIM_INLINE float vload_code(const uint8_t* p) { return static_cast<float>(*p); }
PYOPTIM_INLINE void vstore_code(int8_t* p, uint32_t c) { *p = static_cast<int8_t>(c & 0xFFu); }
PYOPTIM_INLINE void vstore_code(uint8_t* p, uint32_t c) { *p = static_cast<uint8_t>(c & 0xFFu); }
PYOPTIM_INLINE uint32_t vhmax_u32(uint32_t u) { return u; }  // the largest lane: the one
template <class Q>
PYOPTIM_INLINE void vstore_codes4(Q* p, const uint32_t* c) {
  for (int k = 0; k < 4; ++k) vstore_code(p + k, c[k]);
}

// No paired access at this level (see vec_avx512.h).
template <class S>
struct HasPaired {
  static constexpr bool value = false;
};

}  // namespace scalar
}  // namespace cpu
}  // namespace pyoptim
