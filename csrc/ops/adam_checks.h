// adam_'s argument checks shared by the CPU (ops/adam_cpu.cpp) and CUDA (cuda/adam_cuda.cu)
// kernels: everything except where tensors live, which each backend checks itself.
// See Note [All-or-nothing step] in ops/library.cpp: nothing here writes.
#pragma once

#include <ATen/ATen.h>

#include "ops/checks.h"

namespace pyoptim {
namespace ops {

// torch.optim.Adam's hyper-parameter checks (lr is checked where its value is known).
inline void check_adam_hyper(double eps, double beta1, double beta2, double weight_decay) {
  TORCH_CHECK_VALUE(eps >= 0.0, "Invalid epsilon value: ", eps);
  TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, "Invalid beta parameter at index 0: ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, "Invalid beta parameter at index 1: ", beta2);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "Invalid weight_decay value: ", weight_decay);
}

inline void check_adam_lists(const char* op, size_t n, at::TensorList grads,
                             at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                             at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                             bool amsgrad) {
  check_list_size(op, grads, n, "grads");
  check_list_size(op, exp_avgs, n, "exp_avgs");
  check_list_size(op, exp_avg_sqs, n, "exp_avg_sqs");
  check_list_size(op, state_steps, n, "state_steps");
  if (amsgrad) check_list_size(op, max_exp_avg_sqs, n, "max_exp_avg_sqs");
}

// Tensor i: dtypes, shapes, layouts, the step count's shape; records what the step writes.
// params[i] must already be known to be defined, strided and on the backend's device.
inline void check_adam_tensor(const char* op, size_t i, at::TensorList params,
                              at::TensorList grads, at::TensorList exp_avgs,
                              at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                              at::TensorList state_steps, bool amsgrad, WriteSet& writes) {
  const at::Tensor& p = params[i];
  TORCH_CHECK_TYPE(is_supported_float(p.scalar_type()), op, ": params[", i, "] has dtype ",
                   p.scalar_type(),
                   "; supported: float32, float64, bfloat16, float16 (complex params are "
                   "passed as real views)");
  TORCH_CHECK(grads[i].layout() == at::kStrided,
              "Adam does not support sparse gradients, please consider SparseAdam instead");
  check_like_param(op, p, grads[i], "grads", i);
  check_like_param(op, p, exp_avgs[i], "exp_avgs", i);
  check_like_param(op, p, exp_avg_sqs[i], "exp_avg_sqs", i);
  if (amsgrad) check_like_param(op, p, max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
  const at::Tensor& s = state_steps[i];
  TORCH_CHECK_VALUE(s.defined() && s.numel() == 1 && at::isFloatingType(s.scalar_type()), op,
                    ": state_steps[", i, "] must be a one-element floating-point tensor");
  writes.add(p, "params", i);
  writes.add(exp_avgs[i], "exp_avgs", i);
  writes.add(exp_avg_sqs[i], "exp_avg_sqs", i);
  if (amsgrad) writes.add(max_exp_avg_sqs[i], "max_exp_avg_sqs", i);
}

}  // namespace ops
}  // namespace pyoptim
