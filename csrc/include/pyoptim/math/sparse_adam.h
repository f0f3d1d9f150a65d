// THE SparseAdam update: torch.optim.SparseAdam's own expression tree, which is not Adam's.
// Mirrors torch/optim/_functional.py::sparse_adam (torch 2.14) element by element, for one
// element (V = float / double) or one vector of elements (V = a SIMD type) of a touched row.
// `g` is the row's coalesced gradient value: the duplicates of the row summed in position order,
// in blocks of 256 (Note [Blocked duplicate sums] in math/duplicate_sum.h), which is what
// grad.coalesce() computes for rows with up to 256 duplicates.
//
// torch computes, for the coalesced values (all ops in the param dtype):
//   old_m   = exp_avg.sparse_mask(grad)._values()
//   upd_m   = grad_values.sub(old_m).mul_(1 - beta1)
//   exp_avg.add_(upd_m)                                   -> old_m + upd_m
//   old_v   = exp_avg_sq.sparse_mask(grad)._values()
//   upd_v   = grad_values.pow(2).sub_(old_v).mul_(1 - beta2)
//   exp_avg_sq.add_(upd_v)                                -> old_v + upd_v
//   numer   = upd_m.add_(old_m)                           -> the new exp_avg (+ is commutative)
//   denom   = upd_v.add_(old_v).sqrt_().add_(eps)         -> sqrt(new exp_avg_sq) + eps
//   param.add_(-step_size * numer.div_(denom))
// with step_size = lr * sqrt(1 - beta2^step) / (1 - beta1^step) in Python double, and every
// Python scalar narrowed to the tensor's compute type. Unlike Adam, eps is added to the
// un-corrected sqrt(v) and both bias corrections are folded into step_size.
// See Note [Bitwise agreement across paths] and Note [Bias correction in double] in math/adam.h.
#pragma once

#include "pyoptim/math/adam.h"  // pow_d
#include "pyoptim/math/scalar_ops.h"

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

namespace pyoptim {
namespace math {

template <class T>
struct SparseAdamCoeffs {
  T one_minus_beta1;  // 1 - beta1
  T one_minus_beta2;  // 1 - beta2
  T eps;
  T neg_step_size;  // -(lr * sqrt(1 - beta2^step) / (1 - beta1^step))
  T decay_factor;   // 1 - lr * weight_decay (pyoptim extension; see sparse_adam_step)
};

struct SparseAdamBiasCorrections {
  double bias_correction1;  // 1 - beta1**step
  double sqrt_bias_correction2;  // math.sqrt(1 - beta2**step)
};

// See Note [Bias correction in double]. `step` is the param's step count after this step's
// increment (torch increments state["step"] before computing bias corrections).
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE SparseAdamBiasCorrections
sparse_adam_bias_corrections(double beta1, double beta2, double step) {
  const double bias_correction1 = 1.0 - pow_d(beta1, step);  // 1 - beta1**step
  const double bias_correction2 = 1.0 - pow_d(beta2, step);  // 1 - beta2**step
#if defined(__CUDA_ARCH__)
  return {bias_correction1, ::sqrt(bias_correction2)};
#else
  return {bias_correction1, std::sqrt(bias_correction2)};  // math.sqrt(bias_correction2)
#endif
}

// step_size = lr * math.sqrt(bias_correction2) / bias_correction1, in Python floats.
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE double sparse_adam_step_size(double lr, double beta1,
                                                                double beta2, double step) {
  const SparseAdamBiasCorrections b = sparse_adam_bias_corrections(beta1, beta2, step);
  return lr * b.sqrt_bias_correction2 / b.bias_correction1;
}

// `step_size` from sparse_adam_step_size (or, for a Tensor lr, computed in the lr tensor's
// dtype as torch does: see ops/sparse_adam_args.h). Note [Narrowing coefficients].
PYOPTIM_HD_TEMPLATE
template <class T, class N = Narrow<T>>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE SparseAdamCoeffs<T> make_sparse_adam_coeffs(
    double lr, double beta1, double beta2, double eps, double weight_decay, double step_size,
    const N& narrow = N()) {
  SparseAdamCoeffs<T> c;
  c.one_minus_beta1 = narrow(1.0 - beta1);
  c.one_minus_beta2 = narrow(1.0 - beta2);
  c.eps = saturate<T>(eps);  // added as a wrapped number: see Note [Narrowing coefficients]
  c.neg_step_size = narrow(-step_size);  // -step_size * ...
  c.decay_factor = narrow(1.0 - lr * weight_decay);
  return c;
}

// One element (or vector) of a touched row, in place on p, m, v.
//   kMaximize:    torch negates the grad (grad = -grad) before coalescing; summation is
//                 sign-symmetric in IEEE arithmetic, so negating the sum gives the same bits.
//   kWeightDecay: pyoptim's opt-in decoupled weight decay (not in torch, pytorch issue 25484):
//                 param.mul_(1 - lr * weight_decay) first, as AdamW does, on touched rows only.
template <bool kMaximize, bool kWeightDecay, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void sparse_adam_step(V& p, V g, V& m, V& v,
                                                         const SparseAdamCoeffs<T>& c) {
  if (kMaximize) g = -g;  // grad = grad if not maximize else -grad
  const V upd_m = (g - m) * bcast<V>(c.one_minus_beta1);
  // exp_avg_update_values = grad_values.sub(old_exp_avg_values).mul_(1 - beta1)
  m = m + upd_m;  // exp_avg.add_(make_sparse(exp_avg_update_values)); also numer
  const V upd_v = (g * g - v) * bcast<V>(c.one_minus_beta2);
  // exp_avg_sq_update_values = grad_values.pow(2).sub_(old_exp_avg_sq_values).mul_(1 - beta2)
  v = v + upd_v;  // exp_avg_sq.add_(make_sparse(exp_avg_sq_update_values))
  const V denom = vsqrt(v) + bcast<V>(c.eps);
  // denom = exp_avg_sq_update_values.add_(old_exp_avg_sq_values).sqrt_().add_(eps)
  if (kWeightDecay) p = p * bcast<V>(c.decay_factor);  // param.mul_(1 - lr * weight_decay)
  p = p + bcast<V>(c.neg_step_size) * (m / denom);
  // param.add_(make_sparse(-step_size * numer.div_(denom)))
}

}  // namespace math
}  // namespace pyoptim
