// Adam / AdamW CUDA kernels: the per-element functor for multi_tensor_apply, device-side
// coefficients and step counting. The op glue (checks, planning) is ops/adam_cuda.cu; see its
// Note [Where the step count lives].
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <array>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "pyoptim/macros.h"
#include "pyoptim/math/adam.h"

namespace pyoptim {
namespace cuda {

template <class T>
struct AdamLaunchArgs {
  math::AdamCoeffs<T> coeffs;  // host mode: the coefficients of every tensor of the launch
  // device mode: the inputs of make_adam_coeffs (lr and scale unless read on the device)
  double lr, beta1, beta2, eps, weight_decay, scale;
  mta::ScalarRef lr_dev, scale_dev, found_inf;
  bool device_coeffs;
  bool step_is_double;  // device mode: dtype of the step tensors (Chunk::extra)
};

// Device mode: one tensor's coefficients from its step count (the count before this step).
template <class T>
__device__ __noinline__ math::AdamCoeffs<T> adam_device_coeffs(const AdamLaunchArgs<T>& a,
                                                               bool decoupled, const void* step) {
  const double next = mta::next_step_count(step, a.step_is_double);
  const double lr = a.lr_dev.ptr ? a.lr_dev.get() : a.lr;
  const double scale = a.scale_dev.ptr ? a.scale_dev.get() : a.scale;
  return math::make_adam_coeffs<T>(lr, a.beta1, a.beta2, a.eps, a.weight_decay, decoupled,
                                   next, scale);
}

// Arrays: 0 param, 1 grad (read only), 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (amsgrad).
template <class S, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
struct AdamOp {
  using T = mta::opmath_t<S>;
  static constexpr int kDepth = kAmsgrad ? 5 : 4;
  static constexpr unsigned kWrite = kAmsgrad ? 0x1du : 0x0du;
  AdamLaunchArgs<T> a;

  __device__ __forceinline__ void operator()(const mta::Chunk<kDepth>& c, int64_t) const {
    if (a.found_inf.ptr && a.found_inf.get() != 0.0) return;  // GradScaler: skip the step
    math::AdamCoeffs<T> cf;
    if (a.device_coeffs) {
      cf = adam_device_coeffs<T>(a, kDecoupled, c.extra);
    } else {
      cf = a.coeffs;
      if (kScale && a.scale_dev.ptr) cf.grad_scale = static_cast<T>(a.scale_dev.get());
    }
    mta::for_each_element<S, kDepth, kWrite>(c, [&](T(&x)[kDepth]) {
      T vmax = x[kDepth - 1];  // max_exp_avg_sq with amsgrad; else unused by the math
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(x[0], x[1], x[2], x[3], vmax, cf);
      if (kAmsgrad) x[kDepth - 1] = vmax;
    });
  }
};

// One tensor of a launch: its (up to) five arrays, its size, its step count (device mode).
struct AdamWorkItem {
  std::array<void*, 5> addr;
  int64_t numel;
  const void* step;
};

struct AdamLaunchFlags {
  bool decoupled, amsgrad, maximize, scale;
};

template <class S>
void launch_adam(const std::vector<AdamWorkItem>& items,
                 const AdamLaunchArgs<mta::opmath_t<S>>& args, AdamLaunchFlags f) {
  PYOPTIM_BOOL_SWITCH(f.decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
      PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
        PYOPTIM_BOOL_SWITCH(f.scale, kScale, [&] {
          using Op = AdamOp<S, kDecoupled, kAmsgrad, kMaximize, kScale>;
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
    });
  });
}

// ---- step counts on the device -------------------------------------------------------------
constexpr int kMaxSteps = 256;
struct StepIncrement {
  void* ptr[kMaxSteps];
  bool is_double[kMaxSteps];
  int n;
  mta::ScalarRef found_inf;
};

// Each distinct count += 1, computed as the CPU op does (in double, stored in its dtype). A
// template (as every kernel of a header), so two files may instantiate it without an ODR clash.
template <int kUnused>
__global__ void increment_steps(const __grid_constant__ StepIncrement a) {
  const int i = static_cast<int>(threadIdx.x);
  if (i >= a.n) return;
  if (a.found_inf.ptr && a.found_inf.get() != 0.0) return;
  if (a.is_double[i]) {
    double* p = static_cast<double*>(a.ptr[i]);
    *p = *p + 1.0;
  } else {
    float* p = static_cast<float*>(a.ptr[i]);
    *p = static_cast<float>(static_cast<double>(*p) + 1.0);
  }
}

// `steps`: distinct step tensors on the current device (the op's checks reject a count that
// two params share).
inline void launch_increment_steps(const std::vector<at::Tensor>& steps,
                                   mta::ScalarRef found_inf) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (size_t base = 0; base < steps.size(); base += kMaxSteps) {
    StepIncrement a;
    a.n = static_cast<int>(std::min<size_t>(kMaxSteps, steps.size() - base));
    a.found_inf = found_inf;
    for (int k = 0; k < a.n; ++k) {
      a.ptr[k] = steps[base + k].data_ptr();
      a.is_double[k] = steps[base + k].scalar_type() == at::kDouble;
    }
    increment_steps<0><<<1, kMaxSteps, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace cuda
}  // namespace pyoptim
