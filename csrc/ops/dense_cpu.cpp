// Every dense optimizer's op on CPU (Note [Dense optimizers] in pyoptim/dense.h): validate
// everything and compute the coefficients, then one parallel region over all tensors of all
// param groups, then count the steps. The same plan as ops/adam_cpu.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/dense_args.h"
#include "ops/dtypes.h"
#include "ops/parallel.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/dense.h"

namespace pyoptim {
namespace {

// Coefficients per distinct (group, step count, param dtype), computed while validating (a
// coefficient that does not fit raises torch's overflow error before anything is written).
template <class Opt>
class DenseCoeffs {
 public:
  int32_t get(size_t group, double step, at::ScalarType dtype, const std::vector<double>& hyper,
              double scale) {
    for (size_t k = 0; k < keys_.size(); ++k) {
      if (keys_[k].group == group && keys_[k].step == step && keys_[k].dtype == dtype) {
        return static_cast<int32_t>(k);
      }
    }
    keys_.push_back(Key{group, step, dtype});
    f_.emplace_back();
    d_.emplace_back();
    ops::dispatch_param_dtype(dtype, [&](auto st) {
      using S = decltype(st);
      using T = ops::opmath_t<S>;
      cpu::DenseArgs<Opt, T> a{Opt::template coeffs<T>(hyper.data(), step,
                                                       ops::CheckedNarrow<T, S>()),
                               math::saturate<T>(scale)};
      if constexpr (std::is_same<T, double>::value) {
        d_.back() = a;
      } else {
        f_.back() = a;
      }
    });
    return static_cast<int32_t>(keys_.size() - 1);
  }
  const void* args(int32_t k, at::ScalarType dtype) const {
    return dtype == at::kDouble ? static_cast<const void*>(&d_[k])
                                : static_cast<const void*>(&f_[k]);
  }

 private:
  struct Key {
    size_t group;
    double step;
    at::ScalarType dtype;
  };
  std::vector<Key> keys_;
  std::vector<cpu::DenseArgs<Opt, float>> f_;
  std::vector<cpu::DenseArgs<Opt, double>> d_;
};

struct DenseItem {
  cpu::DensePtrs ptrs;
  at::ScalarType dtype;
  unsigned flags;
  int32_t coeffs;
};

template <class Opt>
void dense_cpu(at::TensorList params, at::TensorList grads, at::TensorList states,
               at::TensorList state_steps, at::IntArrayRef group_sizes,
               at::ArrayRef<double> hyper, const c10::List<bool>& flags,
               const c10::List<std::optional<at::Tensor>>& lr_tensors,
               const std::optional<at::Tensor>& grad_scale,
               const std::optional<at::Tensor>& found_inf, bool validate_only) {
  const char* op = ops::dense_op_name<Opt>();
  constexpr int N = Opt::kStates;
  std::vector<at::Tensor> own_grads;  // Note [Grads read by the op] in ops/checks.h
  grads = ops::grads_of_params(op, params, grads, own_grads);
  // ---- 1. validate everything and compute the coefficients; nothing is written here -------
  ops::WriteSet writes;
  ops::DenseCall call = ops::check_dense_call<Opt>(op, c10::DeviceType::CPU, params, grads,
                                                   states, state_steps, group_sizes, hyper,
                                                   flags, lr_tensors, grad_scale, found_inf,
                                                   writes);
  for (size_t g = 0; g < call.hyper.size(); ++g) {
    if (!call.lr_tensor[g].has_value()) continue;
    call.hyper[g][0] = ops::scalar_value(*call.lr_tensor[g], "lr");
    ops::check_hyper(Opt::kChecks[0], call.hyper[g][0]);
  }
  double scale = 1.0;
  if (grad_scale.has_value()) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
    ops::check_grad_scale(op, scale);
  }
  const bool skip = found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0;
  const size_t n = params.size();
  std::vector<double> steps(n, 1.0);  // counts after this step (1: an optimizer without one)
  std::vector<DenseItem> items(n);
  DenseCoeffs<Opt> coeffs;
  for (size_t i = 0; i < n; ++i) {
    if (Opt::kHasStep) {
      steps[i] = ops::next_step_count(op, state_steps[i], i);  // the count after this step
    }
    const size_t g = call.group[i];
    items[i].dtype = params[i].scalar_type();
    items[i].flags = call.flags[g];
    items[i].coeffs = coeffs.get(g, steps[i], items[i].dtype, call.hyper[g], scale);
  }
  writes.check(op);
  if (validate_only || skip) return;  // skip: GradScaler found inf/NaN grads (no step counted)
  grads = writes.unaliased_reads(grads, own_grads);  // Note [Exact overlap]

  // ---- 2. plan: pointers, or copies in one layout where layouts differ ----------------------
  std::vector<std::vector<at::Tensor>> copies(n);  // param, grad, states (only when copied)
  ops::ItemSplit split;
  for (size_t i = 0; i < n; ++i) {
    bool same = params[i].is_non_overlapping_and_dense() &&
                grads[i].strides() == params[i].strides();
    for (int k = 0; k < N; ++k) same = same && states[k * n + i].strides() == params[i].strides();
    cpu::DensePtrs& ptrs = items[i].ptrs;
    if (same) {
      ptrs.param = params[i].data_ptr();
      ptrs.grad = grads[i].const_data_ptr();
      for (int k = 0; k < N; ++k) ptrs.state[k] = states[k * n + i].data_ptr();
    } else {
      // Note [Work layout] in ops/checks.h: the param's own layout where it is dense
      const bool order = ops::param_work_order(params[i], /*memory_order=*/true);
      std::vector<at::Tensor>& c = copies[i];
      c.push_back(ops::in_work_layout(params[i], params[i], order));
      c.push_back(ops::in_work_layout(grads[i], params[i], order));
      for (int k = 0; k < N; ++k) {
        c.push_back(ops::in_work_layout(states[k * n + i], params[i], order));
      }
      ptrs.param = c[0].data_ptr();
      ptrs.grad = c[1].const_data_ptr();
      for (int k = 0; k < N; ++k) ptrs.state[k] = c[2 + k].data_ptr();
    }
    split.add(params[i].numel(), params[i].element_size());
  }

  // ---- 3. update: one parallel region over every tensor -----------------------------------
  const cpu::DenseKernels& k = cpu::current_kernels().dense[dense_index<Opt>()];
  const bool has_scale = grad_scale.has_value();
  split.run([&](size_t i, int64_t begin, int64_t end) {
    const DenseItem& it = items[i];
    const void* args = coeffs.args(it.coeffs, it.dtype);
    ops::dispatch_param_dtype(it.dtype, [&](auto st) {
      ops::cpu_kernel<decltype(st)>(k)(it.ptrs, begin, end, args, it.flags, has_scale);
    });
  });

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (size_t i = 0; i < n; ++i) {
    const std::vector<at::Tensor>& c = copies[i];
    if (c.empty()) continue;
    if (!c[0].is_same(params[i])) params[i].copy_(c[0]);
    for (int s = 0; s < N; ++s) {
      if (!c[2 + s].is_same(states[s * n + i])) states[s * n + i].copy_(c[2 + s]);
    }
  }
  if (Opt::kHasStep) {
    for (size_t i = 0; i < n; ++i) ops::store_host_step(state_steps[i], steps[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) {
  for_each_dense([&](auto opt) { m.impl(decltype(opt)::kName, &dense_cpu<decltype(opt)>); });
}

}  // namespace pyoptim
