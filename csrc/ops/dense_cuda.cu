// Every dense optimizer's op on CUDA (Note [Dense optimizers] in pyoptim/dense.h): the plan of
// ops/adam_cuda.cu (read its Note [Where the step count lives]) for any listed optimizer. The
// kernel: cuda/dense_kernels.cuh.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/adam_kernels.cuh"  // launch_increment_steps
#include "cuda/dense_kernels.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "ops/checks.h"
#include "ops/dense_args.h"
#include "ops/dtypes.h"

namespace pyoptim {
namespace {

struct LaunchKey {
  size_t group;
  at::ScalarType dtype;
  bool device_mode;
  bool step_is_double;
  uint64_t host_step_bits;
  bool operator<(const LaunchKey& o) const {
    return std::tie(group, dtype, device_mode, step_is_double, host_step_bits) <
           std::tie(o.group, o.dtype, o.device_mode, o.step_is_double, o.host_step_bits);
  }
};

template <class Opt>
void dense_cuda(at::TensorList params, at::TensorList grads, at::TensorList states,
                at::TensorList state_steps, at::IntArrayRef group_sizes,
                at::ArrayRef<double> hyper, const c10::List<bool>& flags,
                const c10::List<std::optional<at::Tensor>>& lr_tensors,
                const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf, bool validate_only) {
  const char* op = ops::dense_op_name<Opt>();
  constexpr int N = Opt::kStates;
  // ---- 1. validate everything; nothing is written in this part --------------------------
  ops::WriteSet writes;
  ops::DenseCall call = ops::check_dense_call<Opt>(op, c10::DeviceType::CUDA, params, grads,
                                                   states, state_steps, group_sizes, hyper,
                                                   flags, lr_tensors, grad_scale, found_inf,
                                                   writes);
  const size_t n = params.size();
  const c10::Device dev = call.device;
  bool any_host_step = !Opt::kHasStep;  // no step count: the coefficients are the host's
  for (size_t i = 0; Opt::kHasStep && i < n; ++i) {
    const at::Tensor& s = state_steps[i];
    if (s.device().is_cpu()) {
      any_host_step = true;
    } else {
      TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, op,
                       ": state_steps[", i, "] on ", dev, " must be float32 or float64, got ",
                       s.scalar_type());
    }
  }
  const size_t num_groups = call.hyper.size();
  std::vector<bool> lr_read_on_device(num_groups, false);
  for (size_t g = 0; g < num_groups; ++g) {
    if (!call.lr_tensor[g].has_value()) continue;
    lr_read_on_device[g] = !call.lr_tensor[g]->device().is_cpu() && !any_host_step;
    if (!lr_read_on_device[g]) {
      call.hyper[g][0] = ops::scalar_value(*call.lr_tensor[g], "lr");
      ops::check_hyper(Opt::kChecks[0], call.hyper[g][0]);
    }
  }
  const bool inf_read_on_device =
      found_inf.has_value() && !found_inf->device().is_cpu() && !any_host_step;
  const bool skip = found_inf.has_value() && !inf_read_on_device &&
                    ops::scalar_value(*found_inf, "found_inf") != 0.0;
  const bool scale_on_device = grad_scale.has_value() && !grad_scale->device().is_cpu();
  double scale = 1.0;
  if (grad_scale.has_value() && !scale_on_device) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
    ops::check_grad_scale(op, scale);
  }
  std::vector<double> host_steps(n, 1.0);  // after this step (1: no count)
  std::vector<LaunchKey> keys(n);
  std::map<LaunchKey, typename Opt::template Coeffs<float>> coeffs_f;
  std::map<LaunchKey, typename Opt::template Coeffs<double>> coeffs_d;
  for (size_t i = 0; i < n; ++i) {
    const bool device_step = Opt::kHasStep && !state_steps[i].device().is_cpu();
    LaunchKey key{call.group[i], params[i].scalar_type(), device_step,
                  device_step && state_steps[i].scalar_type() == at::kDouble, 0};
    if (!device_step) {
      if (Opt::kHasStep) {
        host_steps[i] = ops::next_step_count(op, state_steps[i], i);  // after this step
      }
      std::memcpy(&key.host_step_bits, &host_steps[i], sizeof(double));
      if (!coeffs_f.count(key) && !coeffs_d.count(key)) {
        ops::dispatch_param_dtype(key.dtype, [&](auto st) {
          using S = decltype(st);
          using T = cuda::mta::opmath_t<S>;
          const auto c = Opt::template coeffs<T>(call.hyper[key.group].data(),
                                                 host_steps[i], ops::CheckedNarrow<T, S>());
          if constexpr (std::is_same<T, double>::value) {
            coeffs_d[key] = c;
          } else {
            coeffs_f[key] = c;
          }
        });
      }
    }
    keys[i] = key;
  }
  writes.check(op);
  if (validate_only || skip || n == 0) return;
  std::vector<at::Tensor> own_grads;
  grads = writes.unaliased_reads(grads, own_grads);  // Note [Exact overlap]

  // ---- 2. plan: pointers (or contiguous copies), grouped by launch ------------------------
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep_alive;
  std::vector<cuda::mta::ScalarRef> lr_ref(num_groups);
  for (size_t g = 0; g < num_groups; ++g) {
    if (lr_read_on_device[g]) lr_ref[g] = cuda::mta::device_scalar(*call.lr_tensor[g], keep_alive);
  }
  cuda::mta::ScalarRef scale_ref, inf_ref;
  if (scale_on_device) scale_ref = cuda::mta::device_scalar(*grad_scale, keep_alive);
  if (inf_read_on_device) inf_ref = cuda::mta::device_scalar(*found_inf, keep_alive);

  std::vector<std::vector<at::Tensor>> copies(n);  // param, grad, states (only when copied)
  std::map<LaunchKey, std::vector<cuda::DenseWorkItem>> launches;
  std::vector<at::Tensor> device_steps;
  for (size_t i = 0; i < n; ++i) {
    bool same = params[i].is_non_overlapping_and_dense() &&
                grads[i].strides() == params[i].strides();
    for (int k = 0; k < N; ++k) same = same && states[k * n + i].strides() == params[i].strides();
    cuda::DenseWorkItem item{};
    if (same) {
      item.addr[0] = params[i].data_ptr();
      item.addr[1] = const_cast<void*>(grads[i].const_data_ptr());
      for (int k = 0; k < N; ++k) item.addr[2 + k] = states[k * n + i].data_ptr();
    } else {
      std::vector<at::Tensor>& c = copies[i];
      c.push_back(params[i].contiguous());
      c.push_back(grads[i].contiguous());
      for (int k = 0; k < N; ++k) c.push_back(states[k * n + i].contiguous());
      for (int k = 0; k < 2 + N; ++k) item.addr[k] = c[k].data_ptr();
    }
    item.numel = params[i].numel();
    if (keys[i].device_mode) {
      item.step = state_steps[i].const_data_ptr();
      device_steps.push_back(state_steps[i]);
    }
    launches[keys[i]].push_back(item);
  }

  // ---- 3. update: one multi_tensor_apply per launch key -------------------------------------
  for (const auto& launch : launches) {
    const LaunchKey& key = launch.first;
    ops::dispatch_param_dtype(key.dtype, [&](auto st) {
      using S = decltype(st);
      using T = cuda::mta::opmath_t<S>;
      cuda::DenseLaunchArgs<Opt, T> a{};
      for (int k = 0; k < Opt::kHypers; ++k) a.hyper[k] = call.hyper[key.group][k];
      a.scale = scale;
      a.lr_dev = lr_ref[key.group];
      a.scale_dev = scale_ref;
      a.found_inf = inf_ref;
      a.device_coeffs = key.device_mode;
      a.step_is_double = key.step_is_double;
      if (!key.device_mode) {
        if constexpr (std::is_same<T, double>::value) {
          a.coeffs = coeffs_d.at(key);
        } else {
          a.coeffs = coeffs_f.at(key);
        }
      }
      cuda::launch_dense_optimizer<Opt, S>(launch.second, a, call.flags[key.group],
                                           grad_scale.has_value());
    });
  }

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (size_t i = 0; i < n; ++i) {
    const std::vector<at::Tensor>& c = copies[i];
    if (c.empty()) continue;
    if (!c[0].is_same(params[i])) params[i].copy_(c[0]);
    for (int k = 0; k < N; ++k) {
      if (!c[2 + k].is_same(states[k * n + i])) states[k * n + i].copy_(c[2 + k]);
    }
  }
  if (!device_steps.empty()) cuda::launch_increment_steps(device_steps, inf_ref);
  for (size_t i = 0; Opt::kHasStep && i < n; ++i) {
    if (state_steps[i].device().is_cpu()) {
      ops::store_host_step(state_steps[i], host_steps[i]);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) {
  for_each_dense([&](auto opt) { m.impl(decltype(opt)::kName, &dense_cuda<decltype(opt)>); });
}

}  // namespace pyoptim
