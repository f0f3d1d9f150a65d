// pyoptim::adam_ on CPU: validate everything, then one parallel region over all tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/adam_checks.h"
#include "ops/checks.h"
#include "ops/parallel.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/adam.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.adam_";

// One tensor's share of the step, after validation: raw pointers (no tensor handles, so many
// small tensors cost no reference counting) and an index into the coefficient table.
struct AdamItem {
  cpu::AdamPtrs ptrs;
  at::ScalarType dtype;
  int32_t coeffs;
};

// Tensors whose layouts disagree are updated in row-major copies, copied back afterwards.
struct Relayout {
  size_t index;
  at::Tensor param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
};

// Coefficients per distinct step count (usually one for the whole list).
class CoeffTable {
 public:
  int32_t get(double step, bool is_double, double lr, double beta1, double beta2, double eps,
              double weight_decay, double scale) {
    for (size_t k = 0; k < steps_.size(); ++k) {
      if (steps_[k] == step && is_double_[k] == is_double) return static_cast<int32_t>(k);
    }
    steps_.push_back(step);
    is_double_.push_back(is_double);
    f_.push_back(math::make_adam_coeffs<float>(lr, beta1, beta2, eps, weight_decay, step, scale));
    d_.push_back(math::make_adam_coeffs<double>(lr, beta1, beta2, eps, weight_decay, step, scale));
    return static_cast<int32_t>(steps_.size() - 1);
  }
  const math::AdamCoeffs<float>& f(int32_t k) const { return f_[k]; }
  const math::AdamCoeffs<double>& d(int32_t k) const { return d_[k]; }

 private:
  std::vector<double> steps_;
  std::vector<bool> is_double_;
  std::vector<math::AdamCoeffs<float>> f_;
  std::vector<math::AdamCoeffs<double>> d_;
};

void adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
              at::TensorList state_steps, double lr, double beta1, double beta2,
              double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled,
              const std::optional<at::Tensor>& lr_tensor,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  // ---- 1. validate everything; nothing is written in this part --------------------------
  if (lr_tensor.has_value()) lr = ops::scalar_value(*lr_tensor, "lr");
  TORCH_CHECK_VALUE(lr >= 0.0, "Invalid learning rate: ", lr);
  ops::check_adam_hyper(eps, beta1, beta2, weight_decay);
  const size_t n = params.size();
  ops::check_adam_lists(kOp, n, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps,
                        amsgrad);

  ops::WriteSet writes;
  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.defined(), kOp, ": params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, kOp, ": params[", i, "] must be a dense tensor");
    TORCH_CHECK(p.device().is_cpu(), kOp, ": params[", i, "] is on ", p.device(),
                "; this is the CPU kernel");
    ops::check_adam_tensor(kOp, i, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                           state_steps, amsgrad, writes);
    steps[i] = ops::scalar_value(state_steps[i], "state_steps[i]");
  }
  writes.check(kOp);
  if (ops::check_only()) return;  // Note [Check-only calls]

  double scale = 1.0;
  if (grad_scale.has_value()) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
  }
  if (found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0) {
    return;  // GradScaler found inf/NaN grads: skip the step and the step count
  }

  // ---- 2. plan: pointers (or contiguous copies) and per-tensor coefficients ---------------
  std::vector<AdamItem> items(n);
  std::vector<Relayout> relayouts;
  CoeffTable coeffs;
  ops::ItemSplit split;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    AdamItem& it = items[i];
    const at::Tensor& vmax = amsgrad ? max_exp_avg_sqs[i] : none;
    if (ops::same_dense_layout(params[i], {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], &vmax})) {
      it.ptrs = cpu::AdamPtrs{params[i].data_ptr(), grads[i].data_ptr(), exp_avgs[i].data_ptr(),
                              exp_avg_sqs[i].data_ptr(), amsgrad ? vmax.data_ptr() : nullptr};
    } else {  // layouts differ: work on row-major copies (only of those that are not already)
      Relayout r{i,
                 params[i].contiguous(),
                 grads[i].contiguous(),
                 exp_avgs[i].contiguous(),
                 exp_avg_sqs[i].contiguous(),
                 amsgrad ? vmax.contiguous() : at::Tensor()};
      it.ptrs = cpu::AdamPtrs{r.param.data_ptr(), r.grad.data_ptr(), r.exp_avg.data_ptr(),
                              r.exp_avg_sq.data_ptr(),
                              amsgrad ? r.max_exp_avg_sq.data_ptr() : nullptr};
      relayouts.push_back(std::move(r));
    }
    it.dtype = params[i].scalar_type();
    it.coeffs = coeffs.get(steps[i] + 1.0, it.dtype == at::kDouble, lr, beta1, beta2, eps,
                           weight_decay, scale);
    split.add(params[i].numel(), params[i].element_size());
  }

  // ---- 3. update: one parallel region over every tensor -----------------------------------
  const cpu::AdamKernels& k = cpu::current_kernels().adam;
  const cpu::AdamFlags flags{decoupled, amsgrad, maximize, grad_scale.has_value()};
  split.run([&](size_t i, int64_t begin, int64_t end) {
    const AdamItem& it = items[i];
    switch (it.dtype) {
      case at::kFloat: k.f32(it.ptrs, begin, end, coeffs.f(it.coeffs), flags); break;
      case at::kDouble: k.f64(it.ptrs, begin, end, coeffs.d(it.coeffs), flags); break;
      case at::kBFloat16: k.bf16(it.ptrs, begin, end, coeffs.f(it.coeffs), flags); break;
      case at::kHalf: k.f16(it.ptrs, begin, end, coeffs.f(it.coeffs), flags); break;
      default: break;  // unreachable: rejected above
    }
  });

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (const Relayout& r : relayouts) {
    const size_t i = r.index;
    if (!r.param.is_same(params[i])) params[i].copy_(r.param);
    if (!r.exp_avg.is_same(exp_avgs[i])) exp_avgs[i].copy_(r.exp_avg);
    if (!r.exp_avg_sq.is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(r.exp_avg_sq);
    if (amsgrad && !r.max_exp_avg_sq.is_same(max_exp_avg_sqs[i])) {
      max_exp_avg_sqs[i].copy_(r.max_exp_avg_sq);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& s = state_steps[i];
    const double step = steps[i] + 1.0;
    if (s.device().is_cpu() && s.scalar_type() == at::kFloat) {
      *static_cast<float*>(s.data_ptr()) = static_cast<float>(step);
    } else {
      s.fill_(step);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) { m.impl("adam_", &adam_cpu); }

// A sparse grad (or param) among CPU tensors makes the dispatcher pick SparseCPU. The same
// function serves it: its checks reject every non-strided tensor before anything is written,
// with torch.optim's "Adam does not support sparse gradients" for grads, instead of the
// dispatcher's "Could not run 'pyoptim::adam_' with arguments from the 'SparseCPU' backend".
TORCH_LIBRARY_IMPL(pyoptim, SparseCPU, m) { m.impl("adam_", &adam_cpu); }

}  // namespace pyoptim
