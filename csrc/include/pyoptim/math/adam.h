// THE Adam / AdamW / AMSGrad update. One expression tree for every path: the CPU SIMD body
// (V = a vector type), the CPU scalar tail and the CUDA kernels (V = float or double).
//
// Note [Bitwise agreement across paths]
// The math uses only + - * / sqrt and a NaN-propagating max, all correctly rounded in IEEE
// arithmetic, and no FMA: host code is built with -ffp-contract=off and nvcc with --fmad=false.
// So scalar, AVX2, AVX-512, NEON and CUDA compute the same bits for the same inputs, whatever
// the vector width, the tail length or the thread split. tests/test_isa_agreement.py checks it
// (x86 levels), tests/cross/neon_vs_scalar.cpp under qemu (NEON). One freedom IEEE 754 leaves,
// and the compiler takes, remains: which of two different NaN operands an operation returns, and
// the sign of a NaN result (a negation folded into a multiply).
//
// Note [Bias correction in double]
// Per-step coefficients (1 - beta^step, lr / bc1, sqrt(bc2), 1 - lr * wd) are computed once per
// tensor in double, as torch.optim computes them in Python floats, then narrowed to the math
// type T (float for float/bfloat16/half params, double for double params).
//
// Note [One division per element]
// torch divides sqrt(exp_avg_sq) by bias_correction2 ** 0.5, a per-step constant. Division and
// sqrt share one slow unit on CPUs; with bfloat16/float16 params (half the bytes per element)
// the step becomes compute-bound on them. We multiply by the reciprocal instead: 1 / sqrt(bc2)
// computed once per step in double and rounded once to T. torch's divisor is rounded to T too
// (its CPU div and fused kernels convert the Python float to the opmath type), so each side
// carries one rounding of the constant: denom differs from torch's by at most two ulps of T
// (measured for float: 2 ulps in ~0.2% of elements, 1 ulp in ~23%). For double, torch's divisor
// is libm's pow(bc2, 0.5), which is not always the correctly rounded sqrt (glibc:
// pow(1 - 2^-53, 0.5) == 1.0): at most one ulp where it is, at most three in theory where it
// is not (two measured). Against the exact sqrt(v) / sqrt(bc2) rounded once, the float denom is
// within one ulp. The bound and its propagation to the param: tests/tolerances.py
// (DIVISION_FORM). One sqrt and one division per element remain: m / denom.
#pragma once

#include "pyoptim/math/scalar_ops.h"

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

namespace pyoptim {
namespace math {

template <class T>
struct AdamCoeffs {
  T beta2;
  T lerp_weight;            // 1 - beta1
  T lerp_weight_compl;      // 1 - (1 - beta1), rounded in T, as torch's lerp computes it
  T one_minus_beta2;
  T weight_decay;
  T decay_factor;           // 1 - lr * weight_decay   (decoupled / AdamW)
  T inv_bias_correction2_sqrt;  // 1 / sqrt(1 - beta2^step), see Note [One division per element]
  T eps;
  T neg_step_size;          // -lr / (1 - beta1^step)
  T grad_scale;             // GradScaler's scale (1 when absent)
  bool lerp_small;          // |weight| < 0.5: torch's lerp picks its formula by this
  bool has_weight_decay;
};

PYOPTIM_HOST_DEVICE PYOPTIM_INLINE double pow_d(double b, double e) {
#if defined(__CUDA_ARCH__)
  return ::pow(b, e);
#else
  return std::pow(b, e);
#endif
}

// See Note [Bias correction in double] and Note [Narrowing coefficients] (math/scalar_ops.h).
PYOPTIM_HD_TEMPLATE
template <class T, class N = Narrow<T>>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE AdamCoeffs<T> make_adam_coeffs(double lr, double beta1,
                                                                 double beta2, double eps,
                                                                 double weight_decay,
                                                                 bool decoupled, double step,
                                                                 double grad_scale,
                                                                 const N& narrow = N()) {
  AdamCoeffs<T> c;
  const double bias_correction1 = 1.0 - pow_d(beta1, step);  // 1 - beta1 ** step
  const double bias_correction2 = 1.0 - pow_d(beta2, step);  // 1 - beta2 ** step
  c.beta2 = saturate<T>(beta2);  // exp_avg_sq.mul_(beta2): a wrapped number
  c.lerp_weight = narrow(1.0 - beta1);  // lerp_ weight
  c.lerp_weight_compl = T(1) - c.lerp_weight;
  c.lerp_small = (c.lerp_weight < T(0.5)) && (c.lerp_weight > T(-0.5));
  c.one_minus_beta2 = narrow(1.0 - beta2);  // addcmul_ value
  // L2: grad.add(param, alpha=weight_decay); decoupled: unused (param.mul_(1 - lr * wd))
  c.weight_decay = decoupled ? saturate<T>(weight_decay) : narrow.alpha(weight_decay);
  c.has_weight_decay = weight_decay != 0.0;
  c.decay_factor = narrow(1.0 - lr * weight_decay);
#if defined(__CUDA_ARCH__)
  c.inv_bias_correction2_sqrt = saturate<T>(1.0 / ::sqrt(bias_correction2));
#else
  // torch divides by bias_correction2 ** 0.5, a wrapped number
  c.inv_bias_correction2_sqrt = saturate<T>(1.0 / std::sqrt(bias_correction2));
#endif
  c.eps = saturate<T>(eps);  // added as a wrapped number: see Note [Narrowing coefficients]
  c.neg_step_size = narrow(-(lr / bias_correction1));  // addcdiv_ value=-step_size
  c.grad_scale = saturate<T>(grad_scale);  // GradScaler's own float32 (the op checks it)
  return c;
}

// torch.lerp(self, end, w) with torch's two formulas.
template <class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V lerp(V self, V end, T w, T w_compl, bool small) {
  return small ? self + bcast<V>(w) * (end - self) : end - (end - self) * bcast<V>(w_compl);
}

// One element (or one vector of elements) of an Adam step, in place on p, m, v, vmax.
//   kDecoupled: AdamW (decoupled_weight_decay=True); else L2 weight decay on the gradient.
//   kScale:     divide the gradient by GradScaler's scale first.
// Returns sqrt(exp_avg_sq) (of max_exp_avg_sq with amsgrad), which 8-bit states quantize
// (math/quantize.h); adam_step below is this without it.
template <bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V adam_step_root(V& p, V g, V& m, V& v, V& vmax,
                                                    const AdamCoeffs<T>& c) {
  if (kScale) g = g / bcast<V>(c.grad_scale);  // grad / scale (GradScaler unscale)
  if (kMaximize) g = -g;                       // grad = -grad
  if (c.has_weight_decay) {
    if (kDecoupled) {
      p = p * bcast<V>(c.decay_factor);  // param.mul_(1 - lr * weight_decay)
    } else {
      g = g + bcast<V>(c.weight_decay) * p;  // grad = grad.add(param, alpha=weight_decay)
    }
  }
  // exp_avg.lerp_(grad, 1 - beta1)
  m = lerp(m, g, c.lerp_weight, c.lerp_weight_compl, c.lerp_small);
  v = v * bcast<V>(c.beta2) + bcast<V>(c.one_minus_beta2) * g * g;
  // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
  V second = v;
  if (kAmsgrad) {
    vmax = vmax_nan(vmax, v);  // torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    second = vmax;
  }
  // denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), with the division by the
  // per-step constant done as a multiplication by its reciprocal (Note [One division per element])
  const V root = vsqrt(second);
  const V denom = root * bcast<V>(c.inv_bias_correction2_sqrt) + bcast<V>(c.eps);
  // param.addcdiv_(exp_avg, denom, value=-step_size): torch computes self + value * t1 / t2,
  // left to right (CPU addcdiv, fused CPU and CUDA Adam alike), so (value * m) / denom.
  p = p + (bcast<V>(c.neg_step_size) * m) / denom;
  return root;
}

template <bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void adam_step(V& p, V g, V& m, V& v, V& vmax,
                                                  const AdamCoeffs<T>& c) {
  (void)adam_step_root<kDecoupled, kAmsgrad, kMaximize, kScale>(p, g, m, v, vmax, c);
}

}  // namespace math
}  // namespace pyoptim
