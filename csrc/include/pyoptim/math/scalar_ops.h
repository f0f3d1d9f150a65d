// The few primitives the math headers need, for plain float / double (CPU scalar tail and CUDA).
// The SIMD vector types provide the same names (cpu/vec_avx2.h, cpu/vec_avx512.h), so one
// expression tree serves every path. See Note [Bitwise agreement across paths].
#pragma once

#include "pyoptim/macros.h"

namespace pyoptim {
namespace math {

PYOPTIM_HOST_DEVICE PYOPTIM_INLINE float vsqrt(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);  // IEEE round-to-nearest, like the CPU's sqrtss
#else
  return __builtin_sqrtf(x);
#endif
}

PYOPTIM_HOST_DEVICE PYOPTIM_INLINE double vsqrt(double x) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(x);
#else
  return __builtin_sqrt(x);
#endif
}

// torch.maximum: NaN in either operand gives NaN.
template <class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T vmax_nan(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// fma(a, b, c) = a * b + c with ONE rounding (torch's `x.add(y, alpha=a)` is vec::fmadd on
// AVX2/AVX-512 builds). Explicit, never contracted implicitly: see Note [Bitwise agreement
// across paths]. On the scalar level without -mfma this is libm's correctly rounded fma.
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE float vfma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE double vfma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return __builtin_fma(a, b, c);
#endif
}

// Broadcast a scalar coefficient to the value type (identity for scalars).
template <class V, class S>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V bcast(S s) {
  return V(s);
}

}  // namespace math
}  // namespace pyoptim
