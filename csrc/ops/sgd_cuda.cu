// pyoptim::sgd_ on CUDA. The same semantics as ops/sgd_cpu.cpp (read its Note [Sparse SGD]) and
// the same math (math/sgd.h, fma via __fma_rn / __fmaf_rn), so float32 / float64 results equal
// the CPU kernel's bitwise. Kernels: cuda/sgd_kernels.cuh.
//
// Dense grads: one multi_tensor_apply per (group, dtype, first step). A Tensor lr, grad_scale and
// found_inf on the GPU are read by the kernel (no host sync; a step with only dense grads can be
// captured in a CUDA graph), so a device lr is not range-checked. Momentum 0 reads and writes no
// buffer (depth 2).
// Sparse grads: their rows are grouped while validating (one sync for the index range,
// cuda/sparse_rows.cuh), then one warp per unique row. A call with a sparse grad reads its
// scalars on the host: it syncs anyway.
// The opt-in modes (master weights, stochastic rounding, bfloat16 / 8-bit momentum buffer, with
// momentum; Kahan, with or without; dense grads only: the shared checks): one launch per (group,
// dtype, first step) through the launcher of Note [Mixed-mode launches]
// (cuda/sgd_mixed_kernels.cuh), the same bits as the CPU kernels (cpu/sgd_impl.h). The stochastic
// ones ("seeded": an sr_seed per param, an int64 CPU tensor read on the host for the keys) add one
// to each seed after the step, as the CPU op; a call with a seeded param therefore reads found_inf
// on the host (a sync where it is on the GPU): a step skipped on the device would otherwise still
// advance the seeds.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <map>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/mixed_launch.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sgd_kernels.cuh"
#include "cuda/sgd_mixed_kernels.cuh"
#include "cuda/sparse_rows.cuh"
#include "ops/checks.h"
#include "ops/dtypes.h"
#include "ops/sgd_args.h"
#include "pyoptim/math/sgd.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.sgd_";

using cuda::mixed::Mode;
using cuda::mixed::mode_of;  // Note [Mixed-mode launches] in cuda/mixed_launch.cuh

struct DenseKey {
  size_t group;
  at::ScalarType dtype;
  bool first;
  bool operator<(const DenseKey& o) const {
    return std::tie(group, dtype, first) < std::tie(o.group, o.dtype, o.first);
  }
};

void sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
              at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, const c10::List<bool>& flags,
              const c10::List<bool>& first_step,
              const c10::List<std::optional<at::Tensor>>& lr_tensors,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf, bool validate_only,
              const std::optional<at::TensorList>& master_list,
              const std::optional<at::TensorList>& seed_list,
              const std::optional<at::TensorList>& scale_list,
              const std::optional<at::TensorList>& comp_list) {
  const at::TensorList master_params = master_list.value_or(at::TensorList());
  const at::TensorList sr_seeds = seed_list.value_or(at::TensorList());
  const at::TensorList buffer_scales = scale_list.value_or(at::TensorList());
  const at::TensorList kahan_comps = comp_list.value_or(at::TensorList());
  // ---- 1. validate everything (sparse rows grouped); nothing is written here --------------
  ops::WriteSet writes;
  const ops::SgdCall call = ops::check_sgd_call(
      kOp, c10::DeviceType::CUDA, params, grads, momentum_buffers, group_sizes, hyper, flags,
      first_step, lr_tensors, grad_scale, found_inf, master_params, sr_seeds, buffer_scales,
      kahan_comps, writes);
  const size_t n = params.size();
  const c10::Device dev = call.device;
  bool any_sparse = false, any_seeded = false;
  for (size_t i = 0; i < n; ++i) {
    any_sparse = any_sparse || call.sparse[i].has_value();
    any_seeded = any_seeded || call.seed[i] >= 0;
  }
  // With a sparse grad the op syncs anyway: every scalar is read (and checked) on the host.
  const size_t num_groups = call.groups.size();
  std::vector<double> group_lr(num_groups);
  std::vector<bool> lr_on_device(num_groups, false);
  for (size_t g = 0; g < num_groups; ++g) {
    const ops::SgdGroup& grp = call.groups[g];
    group_lr[g] = grp.lr;
    if (grp.lr_tensor.has_value()) {
      lr_on_device[g] = !grp.lr_tensor->device().is_cpu() && !any_sparse;
      if (!lr_on_device[g]) {
        group_lr[g] = ops::scalar_value(*grp.lr_tensor, "lr");
        TORCH_CHECK_VALUE(group_lr[g] >= 0.0, "Invalid learning rate: ", group_lr[g]);
      }
    }
  }
  const bool scale_on_device = grad_scale.has_value() && !grad_scale->device().is_cpu() &&
                               !any_sparse;
  // With a seeded param, found_inf is read on the host (a sync): the host advances the seeds
  // only for a step taken (see the top of the file).
  const bool inf_on_device = found_inf.has_value() && !found_inf->device().is_cpu() &&
                             !any_sparse && !any_seeded;
  double scale = 1.0;
  if (grad_scale.has_value() && !scale_on_device) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
    ops::check_grad_scale(kOp, scale);
  }
  const bool skip = found_inf.has_value() && !inf_on_device &&
                    ops::scalar_value(*found_inf, "found_inf") != 0.0;
  // per (group, param dtype), narrowed with torch's overflow check for that dtype; a
  // master-weights param steps its float32 master: the coefficients of a float32 param
  std::map<std::pair<size_t, at::ScalarType>, math::SgdCoeffs<float>> coeffs_f;
  std::map<std::pair<size_t, at::ScalarType>, math::SgdCoeffs<double>> coeffs_d;
  auto coeff_dtype = [&](size_t i) {
    return call.master[i] >= 0 ? at::kFloat : params[i].scalar_type();
  };
  for (size_t i = 0; i < n; ++i) {
    const std::pair<size_t, at::ScalarType> key{call.group[i], coeff_dtype(i)};
    if (coeffs_f.count(key) || coeffs_d.count(key)) continue;
    const ops::SgdGroup& grp = call.of(i);
    const double glr = lr_on_device[key.first] ? 0.0 : group_lr[key.first];
    ops::dispatch_param_dtype(key.second, [&](auto st) {
      using S = decltype(st);
      using T = cuda::mta::opmath_t<S>;
      const auto c = math::make_sgd_coeffs<T>(glr, grp.momentum, grp.dampening,
                                              grp.weight_decay, scale,
                                              ops::CheckedNarrow<T, S>());
      if constexpr (std::is_same<T, double>::value) {
        coeffs_d[key] = c;
      } else {
        coeffs_f[key] = c;
      }
    });
  }
  std::vector<cuda::DeviceRowGroups> rows(n);
  // plain SGD's path per sparse grad, picked as the CPU op picks it (Note [Sparse SGD])
  std::vector<cpu::PlainSparse> plain(n, cpu::PlainSparse::kInOrder);
  if (n > 0) {
    const c10::cuda::CUDAGuard guard(dev);
    for (size_t i = 0; i < n; ++i) {
      if (!call.sparse[i].has_value()) continue;
      const ops::CooGrad& coo = *call.sparse[i];
      if (coo.nnz == 0) continue;
      const std::string what = c10::str("grads[", i, "]");
      if (validate_only) {  // the index checks, no grouping
        cuda::check_indices_cuda(coo.indices, params[i].sizes(), kOp, what.c_str());
        continue;
      }
      const ops::SgdGroup& grp = call.of(i);
      plain[i] = ops::aten_plain_sparse(params[i], coo, grp.maximize);
      rows[i] = cuda::group_rows_cuda(coo.indices, params[i].sizes(), kOp, what.c_str(),
                                      /*block_sums=*/grp.has_momentum() ||
                                          grp.weight_decay != 0.0 ||
                                          plain[i] == cpu::PlainSparse::kSumFirst);
    }
  }
  // The seeds of the stochastic modes: one-element int64 CPU tensors (checked), read here.
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

  // ---- 2. plan: dense pointers (or contiguous copies), grouped by launch ---------------------
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep_alive;
  std::vector<cuda::mta::ScalarRef> lr_ref(num_groups);
  for (size_t g = 0; g < num_groups; ++g) {
    if (lr_on_device[g]) {
      lr_ref[g] = cuda::mta::device_scalar(*call.groups[g].lr_tensor, keep_alive);
    }
  }
  cuda::mta::ScalarRef scale_ref, inf_ref;
  if (scale_on_device) scale_ref = cuda::mta::device_scalar(*grad_scale, keep_alive);
  if (inf_on_device) inf_ref = cuda::mta::device_scalar(*found_inf, keep_alive);

  struct Work {
    at::Tensor param, grad, buf, master, comp;
  };
  std::vector<Work> work(n);
  std::map<DenseKey, std::vector<cuda::SgdWork>> launches;
  std::map<DenseKey, std::vector<cuda::mixed::MixedItem>> mixed_launches;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    const at::Tensor& buf = call.buf[i] >= 0 ? momentum_buffers[call.buf[i]] : none;
    if (call.sparse[i].has_value()) {
      w.param = params[i].is_contiguous() ? params[i] : params[i].contiguous();
      w.buf = (!buf.defined() || buf.is_contiguous()) ? buf : buf.contiguous();
      continue;
    }
    const Mode mode = mode_of(call.of(i));
    if (mode != Mode::kPlain) {  // as the CPU op plans them (ops/sgd_cpu.cpp)
      const at::Tensor& master = call.master[i] >= 0 ? master_params[call.master[i]] : none;
      const at::Tensor& comp = call.comp[i] >= 0 ? kahan_comps[call.comp[i]] : none;
      if (ops::same_dense_layout(params[i], {&grads[i], &buf, &master, &comp},
                                 call.scale[i] >= 0)) {
        w = Work{params[i], grads[i], buf, master, comp};
      } else {  // layouts differ: work on row-major copies (only those that are not already)
        w.param = params[i].contiguous();
        w.grad = grads[i].contiguous();
        // a first-step buffer is written before it is read: no need to copy its contents
        if (buf.defined()) {
          w.buf = call.first[i] ? at::empty_like(w.param, buf.options()) : buf.contiguous();
        }
        if (master.defined()) w.master = master.contiguous();
        if (comp.defined()) w.comp = comp.contiguous();
      }
      void* const grad = const_cast<void*>(w.grad.const_data_ptr());
      std::array<void*, 6> addr{};
      switch (mode) {
        case Mode::kMaster:
          addr = {w.param.data_ptr(), grad, w.master.data_ptr(), w.buf.data_ptr(), nullptr,
                  nullptr};
          break;
        case Mode::kQ8States:  // the block scales are contiguous (checked), updated in place
          addr = {w.param.data_ptr(), grad, w.buf.data_ptr(),
                  buffer_scales[call.scale[i]].data_ptr(), nullptr, nullptr};
          break;
        case Mode::kKahan:  // no buffer without momentum
          addr = {w.param.data_ptr(), grad, w.buf.defined() ? w.buf.data_ptr() : nullptr,
                  w.comp.data_ptr(), nullptr, nullptr};
          break;
        default:  // kSR, kBf16States
          addr = {w.param.data_ptr(), grad, w.buf.data_ptr(), nullptr, nullptr, nullptr};
      }
      mixed_launches[DenseKey{call.group[i], params[i].scalar_type(), call.first[i]}].push_back(
          cuda::mixed::MixedItem{addr, params[i].numel(), seeds[i], nullptr});
      continue;
    }
    if (ops::same_dense_layout(params[i], {&grads[i], &buf}, /*row_major=*/false)) {
      w = Work{params[i], grads[i], buf};
    } else {  // layouts differ: work on row-major copies (only those that are not already)
      w.param = params[i].contiguous();
      w.grad = grads[i].contiguous();
      // a first-step buffer is written before it is read: no need to copy its contents
      if (buf.defined()) w.buf = call.first[i] ? at::empty_like(w.param) : buf.contiguous();
    }
    launches[DenseKey{call.group[i], params[i].scalar_type(), call.first[i]}].push_back(
        cuda::SgdWork{{w.param.data_ptr(), const_cast<void*>(w.grad.const_data_ptr()),
                       w.buf.defined() ? w.buf.data_ptr() : nullptr},
                      params[i].numel()});
  }

  // ---- 3. update ------------------------------------------------------------------------------
  const bool has_scale = grad_scale.has_value();
  // a launch's arguments but its coefficients (those of its group, plain and mixed launches)
  auto fill_args = [&](auto& a, size_t group) {
    const ops::SgdGroup& grp = call.groups[group];
    a.momentum = grp.momentum;
    a.dampening = grp.dampening;
    a.weight_decay = grp.weight_decay;
    a.scale = scale;
    a.lr_dev = lr_ref[group];
    a.scale_dev = scale_ref;
    a.found_inf = inf_ref;
  };
  for (const auto& launch : launches) {
    const DenseKey& key = launch.first;
    const ops::SgdGroup& grp = call.groups[key.group];
    ops::dispatch_param_dtype(key.dtype, [&](auto st) {
      using S = decltype(st);
      using T = cuda::mta::opmath_t<S>;
      cuda::SgdLaunchArgs<T> a{};
      if constexpr (std::is_same<T, double>::value) {
        a.coeffs = coeffs_d.at({key.group, key.dtype});
      } else {
        a.coeffs = coeffs_f.at({key.group, key.dtype});
      }
      fill_args(a, key.group);
      cuda::launch_dense<S>(launch.second, a, grp.has_momentum(), grp.nesterov, key.first,
                            grp.maximize, has_scale);
    });
  }
  // The modes of Note [Mixed-mode launches]: float32 math (a master's coefficients are a
  // float32 param's), one launch list per key.
  for (const auto& launch : mixed_launches) {
    const DenseKey& key = launch.first;
    const ops::SgdGroup& grp = call.groups[key.group];
    const Mode mode = mode_of(grp);
    cuda::SgdLaunchArgs<float> a{};
    a.coeffs = coeffs_f.at({key.group, mode == Mode::kMaster ? at::kFloat : key.dtype});
    fill_args(a, key.group);
    cuda::mixed::launch_sgd_mixed(mode, key.dtype, launch.second, a, grp.has_momentum(),
                                  grp.nesterov, key.first, grp.maximize, has_scale);
  }
  for (size_t i = 0; i < n; ++i) {
    if (!call.sparse[i].has_value() || rows[i].num_unique == 0) continue;
    const ops::CooGrad& coo = *call.sparse[i];
    if (coo.width == 0) continue;
    const ops::SgdGroup& grp = call.of(i);
    const at::Tensor values = writes.unaliased(coo.values);
    ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
      using S = decltype(st);
      using T = cuda::mta::opmath_t<S>;
      math::SgdCoeffs<T> c;
      if constexpr (std::is_same<T, double>::value) {
        c = coeffs_d.at({call.group[i], params[i].scalar_type()});
      } else {
        c = coeffs_f.at({call.group[i], params[i].scalar_type()});
      }
      cuda::launch_sparse<S>(work[i].param, work[i].buf, values, rows[i], coo.width, c,
                             grp.has_momentum(), grp.nesterov, call.first[i], grp.maximize,
                             has_scale, plain[i] == cpu::PlainSparse::kSumFirst,
                             plain[i] == cpu::PlainSparse::kRoundProduct);
    });
  }

  // ---- 4. copy back what was updated in a copy ----------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    if (!w.param.is_same(params[i])) params[i].copy_(w.param);
    if (w.buf.defined() && !w.buf.is_same(momentum_buffers[call.buf[i]])) {
      momentum_buffers[call.buf[i]].copy_(w.buf);
    }
    if (w.master.defined() && !w.master.is_same(master_params[call.master[i]])) {
      master_params[call.master[i]].copy_(w.master);
    }
    if (w.comp.defined() && !w.comp.is_same(kahan_comps[call.comp[i]])) {
      kahan_comps[call.comp[i]].copy_(w.comp);
    }
  }
  // ---- 5. the next step's seeds (SGD has no step count to key the random bits); the kernels
  // took their keys by value, so this host write does not race them --------------------------
  for (size_t i = 0; i < n; ++i) {
    if (call.seed[i] >= 0) *sr_seeds[call.seed[i]].data_ptr<int64_t>() += 1;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) { m.impl("sgd_", &sgd_cuda); }
// A sparse grad carries the SparseCUDA key, which the dispatcher picks over CUDA.
TORCH_LIBRARY_IMPL(pyoptim, SparseCUDA, m) { m.impl("sgd_", &sgd_cuda); }

}  // namespace pyoptim
