// The few primitives the math headers need, for plain float / double (CPU scalar tail and CUDA).
// The SIMD vector types provide the same names (cpu/vec_avx2.h, cpu/vec_avx512.h), so one
// expression tree serves every path. See Note [Bitwise agreement across paths].
#pragma once

#include "pyoptim/macros.h"

#include <type_traits>

namespace pyoptim {
namespace math {

// The math type of a storage type S: double for double, float for float and for the 16-bit
// types (widened on load, narrowed once on store; csrc/README.md rule 5).
template <class S>
using opmath_t = std::conditional_t<std::is_same<S, double>::value, double, float>;

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

// Note [Narrowing coefficients]
// Per-step coefficients are computed in double (Note [Bias correction in double] in math/adam.h)
// and narrowed to the math type T. A finite double beyond T's range has no T value (the
// conversion is undefined behaviour in C++, where torch raises), so the make_*_coeffs functions
// take the narrowing function as a parameter: the host op layer passes one that raises torch's
// own error (ops::CheckedNarrow, "value cannot be converted to type float without overflow"),
// device code, which cannot raise, this plain conversion (the GPU rounds out-of-range values to
// infinity).
template <class T>
struct Narrow {
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T operator()(double x) const { return static_cast<T>(x); }
};

// Broadcast a scalar coefficient to the value type (identity for scalars).
template <class V, class S>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V bcast(S s) {
  return V(s);
}

}  // namespace math
}  // namespace pyoptim
