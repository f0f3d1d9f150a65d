// Torch-free storage types and their scalar conversions for the CPU kernels.
//
// Everything here is PYOPTIM_INLINE (always_inline): this header is compiled into every ISA
// library with different flags, so no out-of-line copy may exist for the linker to merge.
// See csrc/README.md, rule 2.
#pragma once

#include <cstdint>
#include <cstring>

#include "pyoptim/macros.h"
#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace cpu {

// Same layout as c10::BFloat16 / c10::Half: the op layer reinterpret_casts between them.
struct bf16 {
  uint16_t x;
};
struct fp16 {
  uint16_t x;
};

using math::opmath_t;  // float for bf16 / fp16 (math/scalar_ops.h)

PYOPTIM_INLINE float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
PYOPTIM_INLINE uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

PYOPTIM_INLINE float to_opmath(float x) { return x; }
PYOPTIM_INLINE double to_opmath(double x) { return x; }
PYOPTIM_INLINE float to_opmath(bf16 x) { return bits_to_f32(uint32_t(x.x) << 16); }

// Exact half -> float (as F16C's vcvtph2ps).
PYOPTIM_INLINE float to_opmath(fp16 h) {
  const uint32_t sign = uint32_t(h.x & 0x8000u) << 16;
  const uint32_t exp = (h.x >> 10) & 0x1fu;
  const uint32_t mant = h.x & 0x3ffu;
  if (exp == 0x1fu) return bits_to_f32(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in float
    const float mag = float(mant) * bits_to_f32(0x33800000u);
    return bits_to_f32(sign | f32_to_bits(mag));
  }
  return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

template <class S>
PYOPTIM_INLINE S from_opmath(opmath_t<S> x);

template <>
PYOPTIM_INLINE float from_opmath<float>(float x) { return x; }
template <>
PYOPTIM_INLINE double from_opmath<double>(double x) { return x; }

// float -> bfloat16, round to nearest even; NaN -> 0x7FC0 (as c10::BFloat16).
template <>
PYOPTIM_INLINE bf16 from_opmath<bf16>(float f) {
  if (f != f) return bf16{0x7FC0u};
  const uint32_t u = f32_to_bits(f);
  const uint32_t bias = ((u >> 16) & 1u) + 0x7FFFu;
  return bf16{uint16_t((u + bias) >> 16)};
}

// float -> half, round to nearest even (as F16C's vcvtps2ph with imm 0).
template <>
PYOPTIM_INLINE fp16 from_opmath<fp16>(float f) {
  uint32_t x = f32_to_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf or NaN (NaN is quieted, top payload bits kept)
    return fp16{uint16_t(sign | (x > 0x7f800000u ? (0x7e00u | ((x >> 13) & 0x3ffu)) : 0x7c00u))};
  }
  if (x >= 0x477ff000u) return fp16{uint16_t(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (x < 0x38800000u) {
    // below 2^-14: subnormal half. Adding 0.5f rounds |f| to a multiple of 2^-24 (RNE).
    const float r = bits_to_f32(x) + 0.5f;
    return fp16{uint16_t(sign | (f32_to_bits(r) - 0x3f000000u))};
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round to nearest even
  return fp16{uint16_t(sign | (x >> 13))};
}

}  // namespace cpu
}  // namespace pyoptim
