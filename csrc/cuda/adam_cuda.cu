// pyoptim::adam_ on CUDA: validate everything, then one multi_tensor_apply per group of tensors
// that share a dtype and a way of getting their coefficients, then count the steps.
//
// Note [Where the step count lives]
// torch.optim keeps `step` on the CPU unless capturable or fused, where it is on the param's
// device. pyoptim follows the tensor:
//   * step on the CPU ("host mode"): the count is read on the host, the coefficients are
//     computed there in double (make_adam_coeffs, exactly as the CPU op) and passed to the
//     kernel; tensors with equal counts share one launch. The host writes the new count.
//     lr_tensor and found_inf, if on the GPU, are read on the host too (a sync, as torch's
//     non-capturable step has): the host must know whether to count the step.
//   * step on the GPU ("device mode", capturable/fused): the kernel reads the count, lr_tensor,
//     grad_scale and found_inf on the device and computes each tensor's coefficients there with
//     the same make_adam_coeffs; a second small kernel then increments the counts unless
//     found_inf is set. No host sync, so the step can be captured in a CUDA graph.
// grad_scale on the GPU is always read by the kernel.
//
// float32 steps give the same bits as the CPU kernel (coefficients narrowed to float); in device
// mode float64 params may differ from the CPU in the last bits, because the GPU's double pow is
// not glibc's (tests/test_cuda.py measures it).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "ops/adam_checks.h"
#include "ops/checks.h"
#include "pyoptim/math/adam.h"

namespace pyoptim {
namespace cuda {
namespace {

constexpr const char* kOp = "pyoptim.adam_";

template <class T>
struct AdamArgs {
  math::AdamCoeffs<T> coeffs;  // host mode: the coefficients of every tensor of the launch
  // device mode: the inputs of make_adam_coeffs (lr and scale unless read on the device)
  double lr, beta1, beta2, eps, weight_decay, scale;
  mta::ScalarRef lr_dev, scale_dev, found_inf;
  bool device_coeffs;
  bool step_is_double;  // device mode: dtype of the step tensors (Chunk::extra)
};

// Device mode: one tensor's coefficients from its step count (the count before this step).
template <class T>
__device__ __noinline__ math::AdamCoeffs<T> device_coeffs(const AdamArgs<T>& a,
                                                          const void* step) {
  const double old = a.step_is_double ? *static_cast<const double*>(step)
                                      : static_cast<double>(*static_cast<const float*>(step));
  const double lr = a.lr_dev.ptr ? a.lr_dev.get() : a.lr;
  const double scale = a.scale_dev.ptr ? a.scale_dev.get() : a.scale;
  return math::make_adam_coeffs<T>(lr, a.beta1, a.beta2, a.eps, a.weight_decay, old + 1.0, scale);
}

// Arrays: 0 param, 1 grad (read only), 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (amsgrad).
template <class S, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
struct AdamOp {
  using T = mta::opmath_t<S>;
  static constexpr int kDepth = kAmsgrad ? 5 : 4;
  static constexpr unsigned kWrite = kAmsgrad ? 0x1du : 0x0du;
  AdamArgs<T> a;

  __device__ __forceinline__ void operator()(const mta::Chunk<kDepth>& c, int64_t) const {
    if (a.found_inf.ptr && a.found_inf.get() != 0.0) return;  // GradScaler: skip the step
    math::AdamCoeffs<T> cf;
    if (a.device_coeffs) {
      cf = device_coeffs<T>(a, c.extra);
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

// ---- step counts on the device -------------------------------------------------------------
constexpr int kMaxSteps = 256;
struct StepIncrement {
  void* ptr[kMaxSteps];
  bool is_double[kMaxSteps];
  int n;
  mta::ScalarRef found_inf;
};

// state_steps[i] += 1, computed as the CPU op does (in double, stored in the step's dtype).
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

void launch_increment_steps(std::vector<at::Tensor> steps, mta::ScalarRef found_inf) {
  // The same step tensor twice counts once, as on the CPU.
  std::sort(steps.begin(), steps.end(),
            [](const at::Tensor& x, const at::Tensor& y) { return x.data_ptr() < y.data_ptr(); });
  steps.erase(std::unique(steps.begin(), steps.end(),
                          [](const at::Tensor& x, const at::Tensor& y) {
                            return x.data_ptr() == y.data_ptr();
                          }),
              steps.end());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  for (size_t base = 0; base < steps.size(); base += kMaxSteps) {
    StepIncrement a;
    a.n = static_cast<int>(std::min<size_t>(kMaxSteps, steps.size() - base));
    a.found_inf = found_inf;
    for (int k = 0; k < a.n; ++k) {
      a.ptr[k] = steps[base + k].data_ptr();
      a.is_double[k] = steps[base + k].scalar_type() == at::kDouble;
    }
    increment_steps<<<1, kMaxSteps, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---- planning --------------------------------------------------------------------------------
struct WorkItem {
  std::array<void*, 5> addr;
  int64_t numel;
  const void* step;  // device mode: the step tensor's data
};

// Tensors launched together: same dtype; host mode: same step count; device mode: same step
// dtype.
struct GroupKey {
  at::ScalarType dtype;
  bool device_mode;
  bool step_is_double;
  uint64_t host_step_bits;
  bool operator<(const GroupKey& o) const {
    return std::tie(dtype, device_mode, step_is_double, host_step_bits) <
           std::tie(o.dtype, o.device_mode, o.step_is_double, o.host_step_bits);
  }
};

template <class S>
void launch_group(const std::vector<WorkItem>& items, const AdamArgs<mta::opmath_t<S>>& args,
                  bool decoupled, bool amsgrad, bool maximize, bool scale) {
  PYOPTIM_BOOL_SWITCH(decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(amsgrad, kAmsgrad, [&] {
      PYOPTIM_BOOL_SWITCH(maximize, kMaximize, [&] {
        PYOPTIM_BOOL_SWITCH(scale, kScale, [&] {
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

void adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
               at::TensorList state_steps, double lr, double beta1, double beta2,
               double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled,
               const std::optional<at::Tensor>& lr_tensor,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf) {
  // ---- 1. validate everything; nothing is written in this part --------------------------
  ops::check_adam_hyper(eps, beta1, beta2, weight_decay);
  const size_t n = params.size();
  ops::check_adam_lists(kOp, n, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                        amsgrad);

  c10::Device dev(c10::kCUDA);
  if (n > 0) dev = params[0].device();
  ops::WriteSet writes;
  bool any_host_step = false;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.defined(), kOp, ": params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, kOp, ": params[", i, "] must be a dense tensor");
    TORCH_CHECK(p.is_cuda(), kOp, ": params[", i, "] is on ", p.device(),
                "; this is the CUDA kernel (all tensors of one call on one device)");
    TORCH_CHECK(p.device() == dev, kOp, ": params[", i, "] is on ", p.device(),
                " but params[0] is on ", dev, "; expected all tensors to be on the same device");
    ops::check_adam_tensor(kOp, i, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                           state_steps, amsgrad, writes);
    const at::Tensor& s = state_steps[i];
    if (s.device().is_cpu()) {
      any_host_step = true;
    } else {
      TORCH_CHECK(s.device() == dev, kOp, ": state_steps[", i, "] is on ", s.device(),
                  " but params[", i, "] is on ", dev,
                  "; a step count lives on the CPU or on its param's device");
      TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, kOp,
                       ": state_steps[", i, "] on ", dev,
                       " must be float32 or float64, got ", s.scalar_type());
    }
  }
  writes.check(kOp);
  ops::check_scalar_arg(kOp, lr_tensor, "lr_tensor", dev);
  ops::check_scalar_arg(kOp, grad_scale, "grad_scale", dev);
  ops::check_scalar_arg(kOp, found_inf, "found_inf", dev);

  // Host values; see Note [Where the step count lives].
  const bool lr_on_device = lr_tensor.has_value() && !lr_tensor->device().is_cpu();
  if (lr_tensor.has_value() && (!lr_on_device || any_host_step)) {
    lr = ops::scalar_value(*lr_tensor, "lr");
  }
  const bool lr_read_on_device = lr_on_device && !any_host_step;
  if (!lr_read_on_device) TORCH_CHECK_VALUE(lr >= 0.0, "Invalid learning rate: ", lr);
  if (ops::check_only()) return;  // Note [Check-only calls]
  const bool inf_on_device = found_inf.has_value() && !found_inf->device().is_cpu();
  const bool inf_read_on_device = inf_on_device && !any_host_step;
  if (found_inf.has_value() && !inf_read_on_device &&
      ops::scalar_value(*found_inf, "found_inf") != 0.0) {
    return;  // GradScaler found inf/NaN grads: skip the step and the step count
  }
  const bool scale_on_device = grad_scale.has_value() && !grad_scale->device().is_cpu();
  double scale = 1.0;
  if (grad_scale.has_value() && !scale_on_device) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
  }
  std::vector<double> host_steps(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    if (state_steps[i].device().is_cpu()) {
      host_steps[i] = ops::scalar_value(state_steps[i], "state_steps[i]");
    }
  }
  if (n == 0) return;

  // ---- 2. plan: pointers (or contiguous copies), grouped by launch ------------------------
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep_alive;
  mta::ScalarRef lr_ref, scale_ref, inf_ref;
  if (lr_read_on_device) lr_ref = mta::device_scalar(*lr_tensor, keep_alive);
  if (scale_on_device) scale_ref = mta::device_scalar(*grad_scale, keep_alive);
  if (inf_read_on_device) inf_ref = mta::device_scalar(*found_inf, keep_alive);

  struct Work {
    at::Tensor param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
  };
  std::vector<Work> work(n);
  std::map<GroupKey, std::vector<WorkItem>> groups;
  std::vector<at::Tensor> device_steps;
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    const at::Tensor none;
    const at::Tensor& vmax = amsgrad ? max_exp_avg_sqs[i] : none;
    if (ops::same_dense_layout(params[i], {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], &vmax})) {
      w = Work{params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], vmax};
    } else {  // layouts differ: work on row-major copies (only those that are not already)
      w = Work{params[i].contiguous(), grads[i].contiguous(), exp_avgs[i].contiguous(),
               exp_avg_sqs[i].contiguous(), amsgrad ? vmax.contiguous() : none};
    }
    const at::Tensor& s = state_steps[i];
    GroupKey key{params[i].scalar_type(), !s.device().is_cpu(), s.scalar_type() == at::kDouble,
                 0};
    if (key.device_mode) {
      device_steps.push_back(s);
    } else {
      key.step_is_double = false;
      std::memcpy(&key.host_step_bits, &host_steps[i], sizeof(double));
    }
    groups[key].push_back(WorkItem{{w.param.data_ptr(), w.grad.data_ptr(), w.exp_avg.data_ptr(),
                                    w.exp_avg_sq.data_ptr(),
                                    amsgrad ? w.max_exp_avg_sq.data_ptr() : nullptr},
                                   params[i].numel(),
                                   key.device_mode ? s.data_ptr() : nullptr});
  }

  // ---- 3. update: one multi_tensor_apply per group ----------------------------------------
  const bool has_scale = grad_scale.has_value();
  for (const auto& group : groups) {
    const GroupKey& key = group.first;
    const std::vector<WorkItem>& items = group.second;
    double host_step = 0.0;
    std::memcpy(&host_step, &key.host_step_bits, sizeof(double));
    auto args_for = [&](auto zero) {
      using T = decltype(zero);
      AdamArgs<T> a{};
      a.lr = lr;
      a.beta1 = beta1;
      a.beta2 = beta2;
      a.eps = eps;
      a.weight_decay = weight_decay;
      a.scale = scale;
      a.lr_dev = lr_ref;
      a.scale_dev = scale_ref;
      a.found_inf = inf_ref;
      a.device_coeffs = key.device_mode;
      a.step_is_double = key.step_is_double;
      if (!key.device_mode) {
        a.coeffs =
            math::make_adam_coeffs<T>(lr, beta1, beta2, eps, weight_decay, host_step + 1.0, scale);
      }
      return a;
    };
    mta::dispatch_param_dtype(key.dtype, [&](auto zero) {
      using S = decltype(zero);
      launch_group<S>(items, args_for(mta::opmath_t<S>{}), decoupled, amsgrad, maximize,
                      has_scale);
    });
  }

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    if (!w.param.is_same(params[i])) params[i].copy_(w.param);
    if (!w.exp_avg.is_same(exp_avgs[i])) exp_avgs[i].copy_(w.exp_avg);
    if (!w.exp_avg_sq.is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(w.exp_avg_sq);
    if (amsgrad && !w.max_exp_avg_sq.is_same(max_exp_avg_sqs[i])) {
      max_exp_avg_sqs[i].copy_(w.max_exp_avg_sq);
    }
  }
  if (!device_steps.empty()) launch_increment_steps(std::move(device_steps), inf_ref);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = state_steps[i];
    if (!s.device().is_cpu()) continue;
    const double step = host_steps[i] + 1.0;
    if (s.scalar_type() == at::kFloat) {
      *static_cast<float*>(s.data_ptr()) = static_cast<float>(step);
    } else {
      s.fill_(step);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) { m.impl("adam_", &adam_cuda); }

}  // namespace cuda
}  // namespace pyoptim
