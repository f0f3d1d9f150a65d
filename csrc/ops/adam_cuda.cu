// pyoptim::adam_ on CUDA: validate everything, then one multi_tensor_apply per set of tensors
// that share a group, a dtype, a mode and a way of getting their coefficients, then count the
// steps. Kernels: cuda/adam_kernels.cuh; master weights, stochastic rounding, reduced-precision
// states and Kahan: cuda/adam_mixed_kernels.cuh (Note [Mixed-mode launches] in
// cuda/mixed_launch.cuh).
//
// Note [Where the step count lives]
// torch.optim keeps `step` on the CPU unless capturable or fused, where it is on the param's
// device. pyoptim follows the tensor:
//   * step on the CPU ("host mode"): the count is read on the host, the coefficients are
//     computed there in double (make_adam_coeffs, exactly as the CPU op) and passed to the
//     kernel; tensors with equal counts share one launch. The host writes the new count.
//     Tensor lrs and found_inf, if on the GPU, are read on the host too (a sync, as torch's
//     non-capturable step has): the host must know whether to count the step.
//   * step on the GPU ("device mode", capturable/fused): the kernel reads the count, the lr
//     tensor, grad_scale and found_inf on the device and computes each tensor's coefficients
//     there with the same make_adam_coeffs; a second small kernel then increments the counts
//     unless found_inf is set. No host sync, so the step can be captured in a CUDA graph.
// grad_scale on the GPU is always read by the kernel; a value read on the device is not
// range-checked (that would need the sync capture forbids).
//
// float32 steps give the same bits as the CPU kernel (coefficients narrowed to float); in device
// mode float64 params may differ from the CPU in the last bits, because the GPU's double pow is
// not glibc's (tests/test_cuda.py measures it).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/adam_kernels.cuh"
#include "cuda/adam_mixed_kernels.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "ops/adam_args.h"
#include "ops/checks.h"
#include "ops/dtypes.h"
#include "pyoptim/math/adam.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.adam_";

using cuda::mixed::Mode;
using cuda::mixed::mode_of;  // Note [Mixed-mode launches] in cuda/mixed_launch.cuh

// Tensors launched together: same group, dtype and mode; host mode: same step count; device
// mode: same step dtype.
struct LaunchKey {
  size_t group;
  at::ScalarType dtype;
  bool device_mode;
  bool step_is_double;
  uint64_t host_step_bits;
  Mode mode;
  bool operator<(const LaunchKey& o) const {
    return std::tie(group, dtype, device_mode, step_is_double, host_step_bits, mode) <
           std::tie(o.group, o.dtype, o.device_mode, o.step_is_double, o.host_step_bits, o.mode);
  }
};

void adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
               at::TensorList state_steps, at::IntArrayRef group_sizes,
               at::ArrayRef<double> hyper, const c10::List<bool>& flags,
               const c10::List<std::optional<at::Tensor>>& lr_tensors,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf, bool validate_only,
               const std::optional<at::TensorList>& master_list,
               const std::optional<at::TensorList>& seed_list,
               const std::optional<at::TensorList>& m_scale_list,
               const std::optional<at::TensorList>& v_scale_list,
               const std::optional<at::TensorList>& comp_list) {
  const at::TensorList master_params = master_list.value_or(at::TensorList());
  const at::TensorList sr_seeds = seed_list.value_or(at::TensorList());
  const at::TensorList exp_avg_scales = m_scale_list.value_or(at::TensorList());
  const at::TensorList exp_avg_sq_scales = v_scale_list.value_or(at::TensorList());
  const at::TensorList kahan_comps = comp_list.value_or(at::TensorList());
  // ---- 1. validate everything; nothing is written in this part --------------------------
  ops::WriteSet writes;
  const ops::AdamCall call = ops::check_adam_call(
      kOp, c10::DeviceType::CUDA, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
      state_steps, group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf, master_params,
      sr_seeds, exp_avg_scales, exp_avg_sq_scales, kahan_comps, writes);
  const size_t n = params.size();
  // The stochastic modes (stochastic_rounding, bf16 and 8-bit states) key their random bits by
  // the step count, which the host reads to compute the keys (Note [Mixed-mode launches]): with
  // the count on the GPU (capturable / fused) the key would need a device value, so they take
  // host step counts only. Master weights and Kahan (no random bits) run in both modes.
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK_NOT_IMPLEMENTED(call.seed[i] < 0 || state_steps[i].device().is_cpu(), kOp,
                                ": state_steps[", i, "] is on ", state_steps[i].device(),
                                "; on CUDA, stochastic_rounding and reduced-precision states "
                                "(bfloat16 or 8-bit) need the step count on the CPU (not "
                                "capturable or fused: their random bits are keyed by it)");
  }
  const c10::Device dev = call.device;
  bool any_host_step = false;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = state_steps[i];
    if (s.device().is_cpu()) {
      any_host_step = true;
    } else {
      TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, kOp,
                       ": state_steps[", i, "] on ", dev,
                       " must be float32 or float64, got ", s.scalar_type());
    }
  }

  // Host values; see Note [Where the step count lives].
  const size_t num_groups = call.groups.size();
  std::vector<double> group_lr(num_groups);
  std::vector<bool> lr_read_on_device(num_groups, false);
  for (size_t g = 0; g < num_groups; ++g) {
    const ops::AdamGroup& grp = call.groups[g];
    group_lr[g] = grp.lr;
    if (grp.lr_tensor.has_value()) {
      lr_read_on_device[g] = !grp.lr_tensor->device().is_cpu() && !any_host_step;
      if (!lr_read_on_device[g]) group_lr[g] = ops::scalar_value(*grp.lr_tensor, "lr");
    }
    if (!lr_read_on_device[g]) ops::check_lr(group_lr[g]);
  }
  const bool inf_on_device = found_inf.has_value() && !found_inf->device().is_cpu();
  const bool inf_read_on_device = inf_on_device && !any_host_step;
  const bool skip = found_inf.has_value() && !inf_read_on_device &&
                    ops::scalar_value(*found_inf, "found_inf") != 0.0;
  const bool scale_on_device = grad_scale.has_value() && !grad_scale->device().is_cpu();
  double scale = 1.0;
  if (grad_scale.has_value() && !scale_on_device) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
    ops::check_grad_scale(kOp, scale);
  }
  std::vector<double> host_steps(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    if (state_steps[i].device().is_cpu()) {
      host_steps[i] = ops::next_step_count(kOp, state_steps[i], i);  // after this step
    }
  }
  // Host-mode coefficients, computed here so that an overflow raises before any write.
  std::map<LaunchKey, math::AdamCoeffs<float>> coeffs_f;
  std::map<LaunchKey, math::AdamCoeffs<double>> coeffs_d;
  std::vector<LaunchKey> keys(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = state_steps[i];
    const Mode mode = mode_of(call.of(i));
    LaunchKey key{call.group[i], params[i].scalar_type(), !s.device().is_cpu(),
                  s.scalar_type() == at::kDouble, 0, mode};
    if (!key.device_mode) {
      key.step_is_double = false;
      std::memcpy(&key.host_step_bits, &host_steps[i], sizeof(double));
      const ops::AdamGroup& grp = call.of(i);
      const double lr_i = group_lr[call.group[i]];
      if (!coeffs_f.count(key) && !coeffs_d.count(key)) {
        // a master-weights param steps its float32 master: the coefficients of a float32 param
        const at::ScalarType coeff_dtype = mode == Mode::kMaster ? at::kFloat : key.dtype;
        ops::dispatch_param_dtype(coeff_dtype, [&](auto st) {
          using S = decltype(st);
          using T = cuda::mta::opmath_t<S>;
          const auto c = math::make_adam_coeffs<T>(lr_i, grp.beta1, grp.beta2, grp.eps,
                                                   grp.weight_decay, grp.decoupled,
                                                   host_steps[i], scale,
                                                   ops::CheckedNarrow<T, S>());
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
  // The seeds of the stochastic modes: one-element int64 CPU tensors, read here.
  std::vector<uint64_t> seeds(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (call.seed[i] >= 0) {
      seeds[i] = static_cast<uint64_t>(*sr_seeds[call.seed[i]].const_data_ptr<int64_t>());
    }
  }
  writes.check(kOp);
  if (validate_only || skip || n == 0) return;
  std::vector<at::Tensor> own_grads;
  grads = writes.unaliased_reads(grads, own_grads);  // Note [Exact overlap]

  // ---- 2. plan: pointers (or contiguous copies), grouped by launch ------------------------
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep_alive;
  std::vector<cuda::mta::ScalarRef> lr_ref(num_groups);
  for (size_t g = 0; g < num_groups; ++g) {
    if (lr_read_on_device[g]) {
      lr_ref[g] = cuda::mta::device_scalar(*call.groups[g].lr_tensor, keep_alive);
    }
  }
  cuda::mta::ScalarRef scale_ref, inf_ref;
  if (scale_on_device) scale_ref = cuda::mta::device_scalar(*grad_scale, keep_alive);
  if (inf_read_on_device) inf_ref = cuda::mta::device_scalar(*found_inf, keep_alive);

  struct Work {
    at::Tensor param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master, comp;
  };
  std::vector<Work> work(n);
  std::map<LaunchKey, std::vector<cuda::AdamWorkItem>> launches;
  std::map<LaunchKey, std::vector<cuda::mixed::MixedItem>> mixed_launches;
  std::vector<at::Tensor> device_steps;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    const at::Tensor& vmax = call.vmax[i] >= 0 ? max_exp_avg_sqs[call.vmax[i]] : none;
    const at::Tensor& master = call.master[i] >= 0 ? master_params[call.master[i]] : none;
    const at::Tensor& comp = call.comp[i] >= 0 ? kahan_comps[call.comp[i]] : none;
    if (ops::same_dense_layout(params[i], {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], &vmax,
                                           &master, &comp},
                               call.scale[i] >= 0)) {
      w = Work{params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], vmax, master, comp};
    } else {  // layouts differ: work on row-major copies (only those that are not already)
      w = Work{params[i].contiguous(), grads[i].contiguous(), exp_avgs[i].contiguous(),
               exp_avg_sqs[i].contiguous(), vmax.defined() ? vmax.contiguous() : none,
               master.defined() ? master.contiguous() : none,
               comp.defined() ? comp.contiguous() : none};
    }
    if (keys[i].device_mode) device_steps.push_back(state_steps[i]);
    if (keys[i].mode != Mode::kPlain) {
      auto ptr = [](const at::Tensor& t) -> void* { return t.defined() ? t.data_ptr() : nullptr; };
      void* const grad = const_cast<void*>(w.grad.const_data_ptr());
      std::array<void*, 6> addr{};
      switch (keys[i].mode) {
        case Mode::kMaster:
          addr = {ptr(w.param), grad, ptr(w.master), ptr(w.exp_avg), ptr(w.exp_avg_sq),
                  ptr(w.max_exp_avg_sq)};
          break;
        case Mode::kSR:
          addr = {ptr(w.param), grad, ptr(w.exp_avg), ptr(w.exp_avg_sq), ptr(w.max_exp_avg_sq),
                  nullptr};
          break;
        case Mode::kBf16States:
          addr = {ptr(w.param), grad, ptr(w.exp_avg), ptr(w.exp_avg_sq), nullptr, nullptr};
          break;
        case Mode::kKahan:
          addr = {ptr(w.param), grad, ptr(w.exp_avg), ptr(w.exp_avg_sq), ptr(w.max_exp_avg_sq),
                  ptr(w.comp)};
          break;
        default:  // kQ8States: the block scales are contiguous (checked), updated in place
          addr = {ptr(w.param), grad, ptr(w.exp_avg), ptr(w.exp_avg_sq),
                  exp_avg_scales[call.scale[i]].data_ptr(),
                  exp_avg_sq_scales[call.scale[i]].data_ptr()};
      }
      mixed_launches[keys[i]].push_back(cuda::mixed::MixedItem{
          addr, params[i].numel(), seeds[i],
          keys[i].device_mode ? state_steps[i].const_data_ptr() : nullptr});
      continue;
    }
    launches[keys[i]].push_back(cuda::AdamWorkItem{
        {w.param.data_ptr(), const_cast<void*>(w.grad.const_data_ptr()), w.exp_avg.data_ptr(),
         w.exp_avg_sq.data_ptr(),
         w.max_exp_avg_sq.defined() ? w.max_exp_avg_sq.data_ptr() : nullptr},
        params[i].numel(),
        keys[i].device_mode ? state_steps[i].const_data_ptr() : nullptr});
  }

  // ---- 3. update: one multi_tensor_apply per launch key -------------------------------------
  // A launch's arguments (T: its math type): the group's hyper-parameters, where lr, the scale
  // and found_inf are read, and (host mode) the coefficients computed above.
  const auto launch_args = [&](auto math_type, const LaunchKey& key) {
    using T = decltype(math_type);
    const ops::AdamGroup& grp = call.groups[key.group];
    cuda::AdamLaunchArgs<T> a{};
    a.lr = group_lr[key.group];
    a.beta1 = grp.beta1;
    a.beta2 = grp.beta2;
    a.eps = grp.eps;
    a.weight_decay = grp.weight_decay;
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
    return a;
  };
  const auto launch_flags = [&](const LaunchKey& key) {
    const ops::AdamGroup& grp = call.groups[key.group];
    return cuda::AdamLaunchFlags{grp.decoupled, grp.amsgrad, grp.maximize,
                                 grad_scale.has_value()};
  };
  for (const auto& launch : launches) {
    const LaunchKey& key = launch.first;
    ops::dispatch_param_dtype(key.dtype, [&](auto st) {
      using S = decltype(st);
      cuda::launch_adam<S>(launch.second, launch_args(cuda::mta::opmath_t<S>(), key),
                           launch_flags(key));
    });
  }

  // The modes of Note [Mixed-mode launches]: float32 math (a master's coefficients are a
  // float32 param's), one launch list per key.
  for (const auto& launch : mixed_launches) {
    const LaunchKey& key = launch.first;
    double host_step = 0.0;
    std::memcpy(&host_step, &key.host_step_bits, sizeof(double));
    // the keys' step: the count after this step (the stochastic modes have host counts)
    const uint64_t sr_step = key.device_mode ? 0 : static_cast<uint64_t>(host_step);
    cuda::mixed::launch_adam_mixed(key.mode, key.dtype, launch.second, sr_step,
                                   launch_args(float(), key), launch_flags(key));
  }

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    if (!w.param.is_same(params[i])) params[i].copy_(w.param);
    if (!w.exp_avg.is_same(exp_avgs[i])) exp_avgs[i].copy_(w.exp_avg);
    if (!w.exp_avg_sq.is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(w.exp_avg_sq);
    if (w.max_exp_avg_sq.defined()) {
      const at::Tensor& vmax = max_exp_avg_sqs[call.vmax[i]];
      if (!w.max_exp_avg_sq.is_same(vmax)) vmax.copy_(w.max_exp_avg_sq);
    }
    if (w.master.defined()) {
      const at::Tensor& master = master_params[call.master[i]];
      if (!w.master.is_same(master)) master.copy_(w.master);
    }
    if (w.comp.defined()) {
      const at::Tensor& comp = kahan_comps[call.comp[i]];
      if (!w.comp.is_same(comp)) comp.copy_(w.comp);
    }
  }
  if (!device_steps.empty()) cuda::launch_increment_steps(device_steps, inf_ref);
  for (size_t i = 0; i < n; ++i) {
    if (state_steps[i].device().is_cpu()) {
      ops::store_host_step(state_steps[i], host_steps[i]);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) { m.impl("adam_", &adam_cuda); }

}  // namespace pyoptim
