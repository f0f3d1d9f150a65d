// THE row-wise Adagrad update (pyoptim.RowWiseAdagrad, torch.ops.pyoptim.rowwise_adagrad_):
// one accumulator per row, FBGEMM's EXACT_ROWWISE_ADAGRAD (fbgemm_gpu 1.9,
// codegen/genscript/optimizers.py, rowwise_adagrad(): split_weight_update_cpu and the CUDA
// split_precomputation / split_weight_update), plus torch.optim.Adagrad's lr_decay and maximize.
//
// Note [Row-wise Adagrad]
// For each row r touched by the step (every row for a dense grad; the rows present in a sparse
// grad, its duplicates summed in the order of Note [Blocked duplicate sums]), with g the row's
// gradient (width D) and w the row of the param:
//     g      = -g                                         (maximize; not in FBGEMM)
//     h      = g + weight_decay * w        (mode L2)   or   h = g   (none, decoupled)
//     g_avg  = (sum of h[j] * h[j] over the row) / D      (lane order: Note [Row sum lanes])
//     sum[r] = sum[r] + g_avg
//     mult   = clr / (sqrt(sum[r]) + eps),  clr = lr / (1 + (step - 1) * lr_decay)
//     corr   = 1 - mult * weight_decay    (L2)
//              1 - clr * weight_decay     (decoupled: FBGEMM's DECOUPLE)
//              1                          (none: weight_decay == 0)
//     w      = corr * w - mult * g
// eps is added to sqrt(sum), outside the root, as in FBGEMM and torch's Adagrad. In L2 mode the
// decay enters the accumulator through h and the update through corr (FBGEMM's form: w - mult *
// (g + weight_decay * w), with FBGEMM's roundings). Every operation is a plain IEEE operation in
// the math type T (float for float32 / bfloat16 / float16 params, double for float64); `sum` is
// stored in T (float32 state for 16-bit params, as FBGEMM keeps its momentum1). No FMA anywhere:
// FBGEMM's CPU kernel has none, so with float32 params its results are the same bits.
//
// Note [Row sum lanes]
// The sum of squares is a reduction; its order is fixed, identical on every CPU level and on
// the GPU: element j of the row goes to lane j % kRowSumLanes (32); each lane adds its
// elements' squares left to right, starting from +0; then the lanes are folded pairwise,
// lane[l] = lane[l] + lane[l + h] for h = 16, 8, 4, 2, 1, and lane 0 is the sum. A SIMD level
// keeps the 32 lanes in 32 / W vectors of W lanes (each vector add is W independent lane adds),
// the scalar level in 32 floats, a CUDA warp in its 32 threads (thread l owns the columns
// j = l (mod 32), and the fold is a shuffle tree). The tail of a row (D % 32 elements) is added
// to lanes 0 .. D % 32 - 1 by scalar code on every level: the same additions in the same order.
// So the sum has the same bits at every level and on every device.
#pragma once

#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace math {

constexpr int kRowSumLanes = 32;

enum class RowwiseDecay : int { kNone = 0, kL2 = 1, kDecoupled = 2 };

template <class T>
struct RowwiseAdagradCoeffs {
  T clr;                   // lr / (1 + (step - 1) * lr_decay)
  T eps;
  T weight_decay;
  // 1 - clr * weight_decay, in T (FBGEMM: 1.0 - learning_rate * weight_decay)
  T decoupled_correction;
};

// `step`: the param's step count after this step's increment. Note [Narrowing coefficients].
PYOPTIM_HD_TEMPLATE
template <class T, class N = Narrow<T>>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE RowwiseAdagradCoeffs<T> make_rowwise_adagrad_coeffs(
    double lr, double lr_decay, double eps, double weight_decay, double step,
    const N& narrow = N()) {
  RowwiseAdagradCoeffs<T> c;
  c.clr = narrow(lr / (1.0 + (step - 1.0) * lr_decay));  // clr, the learning_rate FBGEMM reads
  c.eps = saturate<T>(eps);
  c.weight_decay = narrow(weight_decay);
  c.decoupled_correction = T(1) - c.clr * c.weight_decay;  // 1.0 - learning_rate * weight_decay
  return c;
}

// The square one element contributes to its row's sum (g: the row's gradient element, p: the
// param element, read only in L2 mode).
template <bool kMaximize, RowwiseDecay kDecay, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE V rowwise_adagrad_square(V g, V p,
                                                            const RowwiseAdagradCoeffs<T>& c) {
  if (kMaximize) g = -g;
  if (kDecay == RowwiseDecay::kL2) {
    g = g + bcast<V>(c.weight_decay) * p;  // grad += weight_decay * weight
  }
  return g * g;  // g_local_sum_square += grad * grad
}

// Folds the lanes of Note [Row sum lanes] (in place) and returns the row's sum of squares.
template <class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE T fold_row_sum_lanes(T (&lanes)[kRowSumLanes]) {
  for (int h = kRowSumLanes / 2; h >= 1; h /= 2) {
    for (int l = 0; l < h; ++l) lanes[l] = lanes[l] + lanes[l + h];
  }
  return lanes[0];
}

// What one row's update needs, once its sum of squares is known.
template <class T>
struct RowwiseScale {
  T multiplier;
  T correction;
};

// The row's accumulator `sum`, in place, and its multiplier and correction. `square_sum`: the
// folded lanes; `width`: D (> 0).
template <RowwiseDecay kDecay, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE RowwiseScale<T> rowwise_adagrad_row(
    T& sum, T square_sum, T width, const RowwiseAdagradCoeffs<T>& c) {
  const T g_avg = square_sum / width;  // g_avg_square = g_local_sum_square / D
  sum = sum + g_avg;  // new_sum_square_grads = momentum1[idx] + g_avg_square
  RowwiseScale<T> r;
  r.multiplier = c.clr / (vsqrt(sum) + c.eps);
  // multiplier = learning_rate / (sqrtf(new_sum_square_grads) + eps)
  if (kDecay == RowwiseDecay::kL2) {
    r.correction = T(1) - r.multiplier * c.weight_decay;  // 1.0 - multiplier * weight_decay
  } else if (kDecay == RowwiseDecay::kDecoupled) {
    r.correction = c.decoupled_correction;  // 1.0 - learning_rate * weight_decay
  } else {
    r.correction = T(1);
  }
  return r;
}

// One element (or vector) of the row: p in place from the row's gradient element g.
template <bool kMaximize, class V, class T>
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE void rowwise_adagrad_update(V& p, V g,
                                                               const RowwiseScale<T>& r) {
  if (kMaximize) g = -g;
  p = bcast<V>(r.correction) * p - bcast<V>(r.multiplier) * g;
  // weight = correction * weight - multiplier * grad
}

}  // namespace math
}  // namespace pyoptim
