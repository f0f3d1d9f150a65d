// THE Adagrad update, and its description for the dense-optimizer machinery (Note [Dense
// optimizers] in pyoptim/dense.h). Mirrors torch.optim.adagrad._single_tensor_adagrad (torch
// 2.14) for dense gradients line by line, with its rounding points: `x.add(y, alpha=a)` is one
// fused multiply-add in ATen's CPU kernels (as for SGD, Note [SGD mirrors torch's single-tensor
// expressions]), and so is `addcmul_(grad, grad, value=1)` (self + value * t1 * t2, measured on
// torch 2.14's CPU kernels); the decayed lr is computed in double and folded into the step size.
// See Note [Bitwise agreement across paths] (math/adam.h).
#pragma once

#include "pyoptim/math/describe.h"
#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace math {

template <class T>
struct AdagradCoeffs {
  T weight_decay;
  T eps;
  T neg_clr;  // -lr / (1 + (step - 1) * lr_decay)
  bool has_weight_decay;
};

struct Adagrad {
  // ---- the description (Note [Dense optimizers]) ----------------------------------------------
  static constexpr const char* kName = "adagrad_";  // torch.ops.pyoptim.adagrad_
  static constexpr int kStates = 1;                 // sum (torch's state key)
  static constexpr bool kHasStep = true;            // state["step"], counted by the op
  static constexpr int kHypers = 4;                 // per group, in this order (hyper[0] is lr):
  static constexpr HyperCheck kChecks[kHypers] = {
      {"lr", "Invalid learning rate: ", HyperCheck::kNonNegative},
      {"lr_decay", "Invalid lr_decay value: ", HyperCheck::kNonNegative},
      {"weight_decay", "Invalid weight_decay value: ", HyperCheck::kNonNegative},
      {"eps", "Invalid epsilon value: ", HyperCheck::kNonNegative},
  };
  static constexpr int kFlags = 1;  // per group, bit 0: maximize
  template <class T>
  using Coeffs = AdagradCoeffs<T>;

  // Per-step coefficients from a group's hyper-parameters and the step count after this step's
  // increment, in double, then narrowed (Note [Narrowing coefficients] in math/scalar_ops.h).
  PYOPTIM_HD_TEMPLATE
  template <class T, class N = Narrow<T>>
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE static Coeffs<T> coeffs(const double* hyper, double step,
                                                             const N& narrow = N()) {
    const double lr = hyper[0], lr_decay = hyper[1], weight_decay = hyper[2], eps = hyper[3];
    Coeffs<T> c;
    c.weight_decay = narrow.alpha(weight_decay);  // grad.add(param, alpha=weight_decay)
    c.has_weight_decay = weight_decay != 0.0;
    c.eps = saturate<T>(eps);  // state_sum.sqrt().add_(eps): a wrapped number
    // clr = lr / (1 + (step - 1) * lr_decay)
    const double clr = lr / (1.0 + (step - 1.0) * lr_decay);
    c.neg_clr = narrow(-clr);  // addcdiv_ value=-clr
    return c;
  }

  // One element (or one vector of elements): p, the gradient g (already unscaled), and the
  // state s = {sum}, in place. kFlags bit 0: maximize.
  template <unsigned kMask, class V, class T>
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE static void step(V& p, V g, V (&s)[kStates],
                                                      const Coeffs<T>& c) {
    if (kMask & 1u) g = -g;  // grad = grad if not maximize else -grad
    if (c.has_weight_decay) {
      g = vfma(p, bcast<V>(c.weight_decay), g);  // grad = grad.add(param, alpha=weight_decay)
    }
    s[0] = vfma(g, g, s[0]);  // state_sum.addcmul_(grad, grad, value=1): self + 1 * g * g, fused
    const V denom = vsqrt(s[0]) + bcast<V>(c.eps);  // std = state_sum.sqrt().add_(eps)
    p = p + (bcast<V>(c.neg_clr) * g) / denom;
    // param.addcdiv_(grad, std, value=-clr): self + (value * t1) / t2
  }
};

// ---- sparse gradients (torch.ops.pyoptim.sparse_adagrad_) --------------------------------------
// Note [Sparse Adagrad]
// torch's sparse branch of _single_tensor_adagrad is another expression tree than the dense one:
//   grad = grad.coalesce(); grad_values = grad._values()
//   state_sum.add_(_make_sparse(grad, grad_indices, grad_values.pow(2)))
//   std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
//   param.add_(_make_sparse(grad, grad_indices, grad_values / std_values), alpha=-clr)
// on the touched rows only. `grad_values.pow(2)` is a rounded square added with one more rounding
// (add_ of a sparse tensor with alpha 1: exact scaling). The param's add_ with alpha=-clr is one
// fused multiply-add (ATen's axpy, and its kernel for an uncoalesced sparse operand), except where
// ATen's CPU kernel takes its non-hybrid path: a sparse operand flagged coalesced whose values have
// no dense dims, added to a contiguous param, where it rounds alpha * value first
// (`r[i] += alpha * v[k]`; a non-contiguous param takes its coalescing path, fused). _make_sparse
// flags its result coalesced only when it has at most one entry, so that is a grad with a single
// touched element of a contiguous param whose every dim is sparse (kPlainUpdate). Measured on
// torch 2.14's CPU build.
// `g` is the row's coalesced gradient value: its duplicates summed in pyoptim's fixed order
// (Note [Blocked duplicate sums] in math/duplicate_sum.h). weight_decay != 0 is torch's error
// with a sparse grad, raised by the op before anything is written.
template <class T>
struct SparseAdagradCoeffs {
  T eps;
  T neg_clr;  // -lr / (1 + (step - 1) * lr_decay), the alpha of param.add_
};

// `step`: the param's step count after this step's increment. Note [Narrowing coefficients].
PYOPTIM_HD_TEMPLATE
template <class T, class N = Narrow<T>>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE SparseAdagradCoeffs<T> make_sparse_adagrad_coeffs(
    double lr, double lr_decay, double eps, double step, const N& narrow = N()) {
  SparseAdagradCoeffs<T> c;
  c.eps = saturate<T>(eps);  // std_values.add_(eps): a wrapped number
  // clr = lr / (1 + (step - 1) * lr_decay)
  const double clr = lr / (1.0 + (step - 1.0) * lr_decay);
  c.neg_clr = narrow.alpha(-clr);  // param.add_(..., alpha=-clr)
  return c;
}

// One element (or vector) of a touched row, in place on p and the state sum s.
//   kMaximize:    torch negates the grad before coalescing; summation is sign-symmetric in IEEE
//                 arithmetic, so negating the sum gives the same bits.
//   kPlainUpdate: the param's add_ rounds the product first (see the Note).
template <bool kMaximize, bool kPlainUpdate, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void sparse_adagrad_step(V& p, V g, V& s,
                                                            const SparseAdagradCoeffs<T>& c) {
  if (kMaximize) g = -g;  // grad = grad if not maximize else -grad
  s = s + g * g;  // state_sum.add_(_make_sparse(grad, grad_indices, grad_values.pow(2)))
  const V std_values = vsqrt(s) + bcast<V>(c.eps);  // std._values().sqrt_().add_(eps)
  if (kPlainUpdate) {
    p = p + bcast<V>(c.neg_clr) * (g / std_values);
  } else {
    p = vfma(g / std_values, bcast<V>(c.neg_clr), p);
  }
  // param.add_(_make_sparse(grad, grad_indices, grad_values / std_values), alpha=-clr)
}

}  // namespace math
}  // namespace pyoptim
