// THE Adamax update, and its description for the dense-optimizer machinery (Note [Dense
// optimizers] in pyoptim/dense.h). Mirrors torch.optim.adamax._single_tensor_adamax (torch 2.14)
// line by line, with its rounding points but one: `x.add(y, alpha=a)` is one fused multiply-add
// in ATen's CPU kernels (as for SGD, Note [SGD mirrors torch's single-tensor expressions]), lerp
// uses torch's two formulas with each operation rounded (math::lerp, as Adam's: ATen's CPU lerp
// kernel contracts them into an FMA, so exp_avg can be an ulp from torch's for-loop from the
// second step on, within tests/tolerances.py's PARITY), the maximum propagates NaN, the bias
// correction is computed in double and folded into the step size. See Note [Bitwise agreement
// across paths] (math/adam.h).
#pragma once

#include "pyoptim/math/adam.h"  // pow_d, lerp
#include "pyoptim/math/describe.h"
#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace math {

template <class T>
struct AdamaxCoeffs {
  T lerp_weight;        // 1 - beta1
  T lerp_weight_compl;  // 1 - (1 - beta1), rounded in T, as torch's lerp computes it
  T beta2;
  T eps;
  T weight_decay;
  T neg_clr;  // -lr / (1 - beta1^step)
  bool lerp_small;
  bool has_weight_decay;
};

struct Adamax {
  // ---- the description (Note [Dense optimizers]) ----------------------------------------------
  static constexpr const char* kName = "adamax_";  // torch.ops.pyoptim.adamax_
  static constexpr int kStates = 2;                // exp_avg, exp_inf (torch's state keys)
  static constexpr bool kHasStep = true;           // state["step"], counted by the op
  static constexpr int kHypers = 5;                // per group, in this order (hyper[0] is lr):
  static constexpr HyperCheck kChecks[kHypers] = {
      {"lr", "Invalid learning rate: ", HyperCheck::kNonNegative},
      {"beta1", "Invalid beta parameter at index 0: ", HyperCheck::kUnitInterval},
      {"beta2", "Invalid beta parameter at index 1: ", HyperCheck::kUnitInterval},
      {"eps", "Invalid epsilon value: ", HyperCheck::kNonNegative},
      {"weight_decay", "Invalid weight_decay value: ", HyperCheck::kNonNegative},
  };
  static constexpr int kFlags = 1;  // per group, bit 0: maximize
  template <class T>
  using Coeffs = AdamaxCoeffs<T>;

  // Per-step coefficients from a group's hyper-parameters and the step count after this step's
  // increment, in double, then narrowed (Note [Narrowing coefficients] in math/scalar_ops.h).
  PYOPTIM_HD_TEMPLATE
  template <class T, class N = Narrow<T>>
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE static Coeffs<T> coeffs(const double* hyper, double step,
                                                             const N& narrow = N()) {
    const double lr = hyper[0], beta1 = hyper[1], beta2 = hyper[2], eps = hyper[3];
    const double weight_decay = hyper[4];
    Coeffs<T> c;
    c.lerp_weight = narrow(1.0 - beta1);  // lerp_ weight
    c.lerp_weight_compl = T(1) - c.lerp_weight;
    c.lerp_small = (c.lerp_weight < T(0.5)) && (c.lerp_weight > T(-0.5));
    c.beta2 = saturate<T>(beta2);  // exp_inf.mul_(beta2): a wrapped number
    c.eps = saturate<T>(eps);      // grad.abs().add_(eps): a wrapped number
    c.weight_decay = narrow.alpha(weight_decay);  // grad.add(param, alpha=weight_decay)
    c.has_weight_decay = weight_decay != 0.0;
    const double bias_correction = 1.0 - pow_d(beta1, step);  // 1 - beta1 ** step
    c.neg_clr = narrow(-(lr / bias_correction));  // addcdiv_ value=-clr, clr = lr / bias_correction
    return c;
  }

  // One element (or one vector of elements): p, the gradient g (already unscaled), and the
  // state s = {exp_avg, exp_inf}, in place. kFlags bit 0: maximize.
  template <unsigned kMask, class V, class T>
  PYOPTIM_HOST_DEVICE PYOPTIM_INLINE static void step(V& p, V g, V (&s)[kStates],
                                                      const Coeffs<T>& c) {
    if (kMask & 1u) g = -g;  // grad = grad if not maximize else -grad
    if (c.has_weight_decay) {
      g = vfma(p, bcast<V>(c.weight_decay), g);  // grad = grad.add(param, alpha=weight_decay)
    }
    s[0] = lerp(s[0], g, c.lerp_weight, c.lerp_weight_compl, c.lerp_small);
    // exp_avg.lerp_(grad, 1 - beta1)
    s[1] = vmax_nan(s[1] * bcast<V>(c.beta2), vabs(g) + bcast<V>(c.eps));
    // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
    p = p + (bcast<V>(c.neg_clr) * s[0]) / s[1];
    // param.addcdiv_(exp_avg, exp_inf, value=-clr): self + (value * t1) / t2
  }
};

}  // namespace math
}  // namespace pyoptim
