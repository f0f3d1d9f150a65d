// pyoptim::adam_ on CPU: validate everything, then one parallel region over all tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/parallel.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/adam.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.adam_";

// One tensor's share of the step, after validation. `work` tensors are what the kernel reads
// and writes: the user's own tensors when their layouts agree, else contiguous copies that are
// copied back after the kernel.
struct AdamItem {
  at::Tensor param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;  // work tensors
  cpu::AdamPtrs ptrs;
  math::AdamCoeffs<float> cf;
  math::AdamCoeffs<double> cd;
  at::ScalarType dtype;
};

// True when every tensor has param's strides and param covers its memory densely: then the
// kernel can walk all of them as flat arrays in memory order (transposed or channels-last
// weights included) with no copy.
bool same_dense_layout(const at::Tensor& p, std::initializer_list<const at::Tensor*> others) {
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others) {
    if (t->defined() && t->strides() != p.strides()) return false;
  }
  return true;
}

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
  TORCH_CHECK_VALUE(eps >= 0.0, "Invalid epsilon value: ", eps);
  TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, "Invalid beta parameter at index 0: ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, "Invalid beta parameter at index 1: ", beta2);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "Invalid weight_decay value: ", weight_decay);

  const size_t n = params.size();
  ops::check_list_size(kOp, grads, n, "grads");
  ops::check_list_size(kOp, exp_avgs, n, "exp_avgs");
  ops::check_list_size(kOp, exp_avg_sqs, n, "exp_avg_sqs");
  ops::check_list_size(kOp, state_steps, n, "state_steps");
  if (amsgrad) ops::check_list_size(kOp, max_exp_avg_sqs, n, "max_exp_avg_sqs");

  ops::WriteSet writes;
  std::vector<double> steps(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.defined(), kOp, ": params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, kOp, ": params[", i, "] must be a dense tensor");
    TORCH_CHECK(p.device().is_cpu(), kOp, ": params[", i, "] is on ", p.device(),
                "; this is the CPU kernel");
    TORCH_CHECK_TYPE(ops::is_supported_float(p.scalar_type()), kOp, ": params[", i,
                     "] has dtype ", p.scalar_type(),
                     "; supported: float32, float64, bfloat16, float16 (complex params are "
                     "passed as real views)");
    TORCH_CHECK(grads[i].layout() == at::kStrided,
                "Adam does not support sparse gradients, please consider SparseAdam instead");
    ops::check_like_param(kOp, p, grads[i], "grads", i);
    ops::check_like_param(kOp, p, exp_avgs[i], "exp_avgs", i);
    ops::check_like_param(kOp, p, exp_avg_sqs[i], "exp_avg_sqs", i);
    if (amsgrad) ops::check_like_param(kOp, p, max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
    const at::Tensor& s = state_steps[i];
    TORCH_CHECK_VALUE(s.defined() && s.numel() == 1 && at::isFloatingType(s.scalar_type()), kOp,
                      ": state_steps[", i, "] must be a one-element floating-point tensor");
    steps[i] = ops::scalar_value(s, "state_steps[i]");
    writes.add(p, "params", i);
    writes.add(exp_avgs[i], "exp_avgs", i);
    writes.add(exp_avg_sqs[i], "exp_avg_sqs", i);
    if (amsgrad) writes.add(max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
  }
  writes.check(kOp);

  double scale = 1.0;
  if (grad_scale.has_value()) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
  }
  if (found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0) {
    return;  // GradScaler found inf/NaN grads: skip the step and the step count
  }

  // ---- 2. plan: pointers (or contiguous copies) and per-tensor coefficients ---------------
  std::vector<AdamItem> items(n);
  ops::ItemSplit split;
  for (size_t i = 0; i < n; ++i) {
    AdamItem& it = items[i];
    const at::Tensor none;
    const at::Tensor& vmax = amsgrad ? max_exp_avg_sqs[i] : none;
    if (same_dense_layout(params[i], {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], &vmax})) {
      it.param = params[i];
      it.grad = grads[i];
      it.exp_avg = exp_avgs[i];
      it.exp_avg_sq = exp_avg_sqs[i];
      it.max_exp_avg_sq = vmax;
    } else {  // layouts differ: work on row-major copies (only those that are not already)
      it.param = params[i].contiguous();
      it.grad = grads[i].contiguous();
      it.exp_avg = exp_avgs[i].contiguous();
      it.exp_avg_sq = exp_avg_sqs[i].contiguous();
      if (amsgrad) it.max_exp_avg_sq = vmax.contiguous();
    }
    it.dtype = params[i].scalar_type();
    it.ptrs = cpu::AdamPtrs{it.param.data_ptr(), it.grad.data_ptr(), it.exp_avg.data_ptr(),
                            it.exp_avg_sq.data_ptr(),
                            amsgrad ? it.max_exp_avg_sq.data_ptr() : nullptr};
    const double step = steps[i] + 1.0;
    if (it.dtype == at::kDouble) {
      it.cd = math::make_adam_coeffs<double>(lr, beta1, beta2, eps, weight_decay, step, scale);
    } else {
      it.cf = math::make_adam_coeffs<float>(lr, beta1, beta2, eps, weight_decay, step, scale);
    }
    split.add(params[i].numel(), params[i].element_size());
  }

  // ---- 3. update: one parallel region over every tensor -----------------------------------
  const cpu::AdamKernels& k = cpu::current_kernels().adam;
  const cpu::AdamFlags flags{decoupled, amsgrad, maximize, grad_scale.has_value()};
  split.run([&](size_t i, int64_t begin, int64_t end) {
    const AdamItem& it = items[i];
    switch (it.dtype) {
      case at::kFloat: k.f32(it.ptrs, begin, end, it.cf, flags); break;
      case at::kDouble: k.f64(it.ptrs, begin, end, it.cd, flags); break;
      case at::kBFloat16: k.bf16(it.ptrs, begin, end, it.cf, flags); break;
      case at::kHalf: k.f16(it.ptrs, begin, end, it.cf, flags); break;
      default: break;  // unreachable: rejected above
    }
  });

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (size_t i = 0; i < n; ++i) {
    AdamItem& it = items[i];
    if (!it.param.is_same(params[i])) params[i].copy_(it.param);
    if (!it.exp_avg.is_same(exp_avgs[i])) exp_avgs[i].copy_(it.exp_avg);
    if (!it.exp_avg_sq.is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(it.exp_avg_sq);
    if (amsgrad && !it.max_exp_avg_sq.is_same(max_exp_avg_sqs[i])) {
      max_exp_avg_sqs[i].copy_(it.max_exp_avg_sq);
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
