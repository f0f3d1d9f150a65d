// The CUDA kernel of every dense optimizer (Note [Dense optimizers] in pyoptim/dense.h): one
// multi_tensor_apply functor calling Opt::step. Op glue: ops/dense_cuda.cu.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "pyoptim/dense.h"
#include "pyoptim/macros.h"

namespace pyoptim {
namespace cuda {

template <class Opt, class T>
struct DenseLaunchArgs {
  typename Opt::template Coeffs<T> coeffs;  // host mode: the coefficients of every tensor
  double hyper[Opt::kHypers];  // device mode: the inputs of Opt::coeffs (hyper[0] is lr)
  double scale;
  mta::ScalarRef lr_dev, scale_dev, found_inf;
  bool device_coeffs;   // step counts on the device: coefficients per tensor, on the device
  bool step_is_double;  // device mode: dtype of the step tensors (Chunk::extra)
};

// Arrays: 0 param, 1 grad (read only), 2.. the states.
template <class Opt, class S, unsigned kMask, bool kScale>
struct DenseOp {
  using T = mta::opmath_t<S>;
  static constexpr int kDepth = 2 + Opt::kStates;
  static constexpr unsigned kWrite = ((1u << kDepth) - 1u) & ~2u;  // all but the grad
  DenseLaunchArgs<Opt, T> a;

  __device__ __forceinline__ void operator()(const mta::Chunk<kDepth>& c, int64_t) const {
    if (a.found_inf.ptr && a.found_inf.get() != 0.0) return;  // GradScaler: skip the step
    typename Opt::template Coeffs<T> cf = a.coeffs;
    if (a.device_coeffs) {
      double h[Opt::kHypers];
      for (int k = 0; k < Opt::kHypers; ++k) h[k] = a.hyper[k];
      if (a.lr_dev.ptr) h[0] = a.lr_dev.get();
      cf = Opt::template coeffs<T>(h, mta::next_step_count(c.extra, a.step_is_double));
    }
    const T scale = static_cast<T>(a.scale_dev.ptr ? a.scale_dev.get() : a.scale);
    mta::for_each_element<S, kDepth, kWrite>(c, [&](T(&x)[kDepth]) {
      T g = x[1];
      if (kScale) g = g / scale;  // grad / scale (GradScaler unscale)
      T s[Opt::kStates];
#pragma unroll
      for (int k = 0; k < Opt::kStates; ++k) s[k] = x[2 + k];
      Opt::template step<kMask>(x[0], g, s, cf);
#pragma unroll
      for (int k = 0; k < Opt::kStates; ++k) x[2 + k] = s[k];
    });
  }
};

// One tensor of a launch: param, grad, states; its size; its step count (device mode).
struct DenseWorkItem {
  std::array<void*, 2 + cpu::kMaxDenseStates> addr;
  int64_t numel;
  const void* step;
};

template <class Opt, class S>
void launch_dense_optimizer(const std::vector<DenseWorkItem>& items,
                            const DenseLaunchArgs<Opt, mta::opmath_t<S>>& args, unsigned flags,
                            bool scale) {
  mask_switch<(1u << Opt::kFlags)>(flags, [&](auto m) {
    PYOPTIM_BOOL_SWITCH(scale, kScale, [&] {
      using Op = DenseOp<Opt, S, decltype(m)::value, kScale>;
      constexpr int D = Op::kDepth;
      std::vector<mta::TensorRef<D>> refs(items.size());
      for (size_t k = 0; k < items.size(); ++k) {
        for (int d = 0; d < D; ++d) refs[k].addr[d] = items[k].addr[d];
        refs[k].numel = items[k].numel;
        refs[k].extra = items[k].step;
      }
      mta::multi_tensor_apply<S, D>(refs, Op{args});
    });
  });
}

}  // namespace cuda
}  // namespace pyoptim
