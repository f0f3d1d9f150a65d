// THE SGD update (momentum, dampening, Nesterov, L2 weight decay, maximize). One expression tree
// for the dense CPU kernel (SIMD body and scalar tail), the sparse row kernel and CUDA.
//
// Note [SGD mirrors torch's single-tensor expressions]
// Each line reproduces one line of torch.optim.sgd._single_tensor_sgd (torch 2.14), in the same
// order and with the same rounding points. torch's `x.add(y, alpha=a)` is `vec::fmadd(y, a, x)`
// in ATen's AVX2/AVX-512 kernels (one rounding), so we use an explicit vfma there. Everything
// else is + - * / only, so the paths still agree bitwise (Note [Bitwise agreement across paths]
// in math/adam.h), and float32 / float64 params get torch's own bits on this kind of CPU.
// Reduced precision (bfloat16 / float16) is computed in float and rounded once on store, where
// torch rounds after every op: those differ from torch by the intermediate roundings.
//
// Note [SGD first step]
// torch starts the momentum buffer as a copy of the (decayed) gradient on a param's first step
// (`buf = grad.detach().clone()`), not as zeros. kFirst selects that rule; the op layer sets it
// for tensors whose buffer does not exist yet (the Python class creates it just before).
#pragma once

#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace math {

template <class T>
struct SgdCoeffs {
  T weight_decay;
  T momentum;
  T one_minus_dampening;  // 1 - dampening, computed in double (torch: a Python float alpha)
  T neg_lr;               // -lr
  T grad_scale;           // GradScaler's scale (1 when absent)
  bool has_weight_decay;
};

// Computed once per call on the host, in double, then narrowed (as torch narrows its alphas;
// Note [Narrowing coefficients] in math/scalar_ops.h).
PYOPTIM_HD_TEMPLATE
template <class T, class N = Narrow<T>>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE SgdCoeffs<T> make_sgd_coeffs(double lr, double momentum,
                                                               double dampening,
                                                               double weight_decay,
                                                               double grad_scale,
                                                               const N& narrow = N()) {
  SgdCoeffs<T> c;
  c.weight_decay = narrow.alpha(weight_decay);  // every SGD coefficient is an add alpha
  c.has_weight_decay = weight_decay != 0.0;
  c.momentum = narrow.alpha(momentum);
  c.one_minus_dampening = narrow.alpha(1.0 - dampening);
  c.neg_lr = narrow.alpha(-lr);
  c.grad_scale = saturate<T>(grad_scale);  // GradScaler's own float32 (the op checks it)
  return c;
}

// One element (or one vector of elements) of an SGD step, in place on p and buf.
//   kMomentum: momentum != 0 (else buf is neither read nor written).
//   kFirst:    the buffer's first step: buf = grad (Note [SGD first step]).
//   kScale:    divide the gradient by GradScaler's scale first.
template <bool kMomentum, bool kNesterov, bool kFirst, bool kMaximize, bool kScale, class V,
          class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void sgd_step(V& p, V g, V& buf, const SgdCoeffs<T>& c) {
  if (kScale) g = g / bcast<V>(c.grad_scale);  // grad / scale (GradScaler unscale)
  if (kMaximize) g = -g;                       // grad = -grads[i]
  if (c.has_weight_decay) {
    g = vfma(p, bcast<V>(c.weight_decay), g);  // grad = grad.add(param, alpha=weight_decay)
  }
  if (kMomentum) {
    if (kFirst) {
      buf = g;  // buf = grad.detach().clone()
    } else {
      // buf.mul_(momentum).add_(grad, alpha=1 - dampening)
      buf = vfma(g, bcast<V>(c.one_minus_dampening), buf * bcast<V>(c.momentum));
    }
    if (kNesterov) {
      g = vfma(buf, bcast<V>(c.momentum), g);  // grad = grad.add(buf, alpha=momentum)
    } else {
      g = buf;  // grad = buf
    }
  }
  p = vfma(g, bcast<V>(c.neg_lr), p);  // param.add_(grad, alpha=-lr)
}

// Plain SGD (no momentum, no weight decay) on one entry of a sparse gradient that ATen adds by
// its non-hybrid path: a gradient flagged coalesced whose values have no dense dims, where
// `param.add_(grad, alpha=-lr)` rounds the product before the add (`r[i] += alpha * v[k]`;
// Note [Sparse SGD] in ops/sgd_cpu.cpp). sgd_step's plain update is one fused multiply-add.
template <bool kMaximize, bool kScale, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void sgd_plain_rounded(V& p, V g, const SgdCoeffs<T>& c) {
  if (kScale) g = g / bcast<V>(c.grad_scale);  // grad / scale (GradScaler unscale)
  if (kMaximize) g = -g;                       // grad = -grads[i]
  p = p + bcast<V>(c.neg_lr) * g;              // r[i] += alpha * v[k]
}

// Lifts sgd_step's runtime flags into its template parameters, for the CPU and CUDA launchers:
// calls f(kMomentum, kNesterov, kFirst, kMaximize, kScale), each a std::integral_constant<bool>.
// With momentum off, nesterov and the first-step rule are unused and fixed to false (fewer
// instantiations).
template <class F>
PYOPTIM_INLINE void sgd_flag_switch(bool momentum, bool nesterov, bool first, bool maximize,
                                    bool scale, const F& f) {
  using False = std::integral_constant<bool, false>;
  using True = std::integral_constant<bool, true>;
  PYOPTIM_BOOL_SWITCH(maximize, kMax, [&] {
    PYOPTIM_BOOL_SWITCH(scale, kS, [&] {
      using Max = std::integral_constant<bool, kMax>;
      using S = std::integral_constant<bool, kS>;
      if (!momentum) {
        f(False(), False(), False(), Max(), S());
        return;
      }
      PYOPTIM_BOOL_SWITCH(nesterov, kN, [&] {
        PYOPTIM_BOOL_SWITCH(first, kF, [&] {
          f(True(), std::integral_constant<bool, kN>(), std::integral_constant<bool, kF>(), Max(),
            S());
        });
      });
    });
  });
}

}  // namespace math
}  // namespace pyoptim
