// The few primitives the math headers need, for plain float / double (CPU scalar tail and CUDA).
// The SIMD vector types provide the same names (cpu/vec_avx2.h, vec_avx512.h, vec_neon.h), so one
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

// |x| (torch.abs): clears the sign bit, NaN stays NaN.
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE float vabs(float x) {
#if defined(__CUDA_ARCH__)
  return ::fabsf(x);
#else
  return __builtin_fabsf(x);
#endif
}
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE double vabs(double x) {
#if defined(__CUDA_ARCH__)
  return ::fabs(x);
#else
  return __builtin_fabs(x);
#endif
}

// torch.maximum: NaN in either operand gives NaN.
template <class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T vmax_nan(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// x finite ? a : b (x - x is 0 for a finite x, NaN for inf and NaN).
template <class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T vselect_finite(T x, T a, T b) {
  return x - x == T(0) ? a : b;
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
// and narrowed to the math type T. A finite double beyond T's range has no T value (a plain
// conversion is undefined behaviour in C++). torch raises "value cannot be converted to type
// <param dtype> without overflow" where it turns a Python scalar into an op's `alpha` / `value`
// (a step size, a weight decay), and lets a scalar that an op treats as a wrapped number (eps in
// `denom.add_(eps)`, beta2 in `mul_(beta2)`, the bias-correction divisor) become infinity. The
// make_*_coeffs functions follow it: the coefficients torch checks go through `narrow`, the
// narrowing function the caller passes (the host op layer: ops::CheckedNarrow, which raises
// torch's error for the param's dtype; device code, which cannot raise: Narrow below), the
// wrapped numbers (and GradScaler's scale, a float32 the op checks) through `saturate`, which
// rounds an out-of-range value to infinity, as torch's wrapped-number conversion does, with no
// undefined behaviour.
template <class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T saturate(double x) {
  if (sizeof(T) < sizeof(double)) {
    constexpr double kMax = 3.4028234663852886e38;  // the largest float
    if (x > kMax) return static_cast<T>(kMax) * T(2);  // +inf, without converting out of range
    if (x < -kMax) return static_cast<T>(-kMax) * T(2);
  }
  return static_cast<T>(x);
}

// The narrowing of device code: `narrow(x)` for an op's `value` (checked against the math type
// on the host), `narrow.alpha(x)` for an `alpha` (checked against the param's dtype).
template <class T>
struct Narrow {  // see PYOPTIM_HD_TEMPLATE in macros.h
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T operator()(double x) const { return saturate<T>(x); }
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T alpha(double x) const { return saturate<T>(x); }
};

// Broadcast a scalar coefficient to the value type (identity for scalars).
template <class V, class S>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V bcast(S s) {
  return V(s);
}

}  // namespace math
}  // namespace pyoptim
