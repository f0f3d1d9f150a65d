// sparse_adam_'s arguments, shared by the CPU (ops/sparse_adam_cpu.cpp) and CUDA
// (cuda/sparse_adam_cuda.cu) kernels: the checks (see Note [All-or-nothing step] in
// ops/library.cpp: nothing here writes) and each param's step size.
#pragma once

#include <ATen/ATen.h>

#include "ops/adam_checks.h"
#include "ops/checks.h"
#include "ops/sparse_rows.h"
#include "pyoptim/math/sparse_adam.h"

#include <optional>

namespace pyoptim {
namespace ops {

// A Tensor lr, copied to the host (the op syncs anyway); its value replaces `lr`.
inline std::optional<at::Tensor> read_sparse_adam_lr(const char* op,
                                                     const std::optional<at::Tensor>& lr_tensor,
                                                     double& lr) {
  if (!lr_tensor.has_value()) return std::nullopt;
  TORCH_CHECK_VALUE(lr_tensor->numel() == 1 && at::isFloatingType(lr_tensor->scalar_type()), op,
                    ": lr_tensor must be a one-element floating-point tensor");
  at::Tensor host = lr_tensor->cpu();
  lr = scalar_value(host, "lr");
  return host;
}

// lr (its value, after read_sparse_adam_lr), Adam's hyper-parameters and the list lengths.
inline void check_sparse_adam_args(const char* op, double lr, double beta1, double beta2,
                                   double eps, double weight_decay, size_t n,
                                   at::TensorList grads, at::TensorList exp_avgs,
                                   at::TensorList exp_avg_sqs, at::IntArrayRef steps) {
  TORCH_CHECK_VALUE(lr >= 0.0, "Invalid learning rate: ", lr);
  check_adam_hyper(eps, beta1, beta2, weight_decay);
  check_list_size(op, grads, n, "grads");
  check_list_size(op, exp_avgs, n, "exp_avgs");
  check_list_size(op, exp_avg_sqs, n, "exp_avg_sqs");
  TORCH_CHECK_VALUE(steps.size() == n, op, ": expected ", n, " steps (one per param), got ",
                    steps.size());
}

// Param i of the call, on the backend `device_type` (the CPU or the CUDA kernel): the param, its
// COO gradient (returned, checked) and its state; records what the step writes.
inline CooGrad check_sparse_adam_tensor(const char* op, size_t i, c10::DeviceType device_type,
                                        at::TensorList params, at::TensorList grads,
                                        at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                        at::IntArrayRef steps, WriteSet& writes) {
  const at::Tensor& p = params[i];
  const at::Tensor& g = grads[i];
  TORCH_CHECK_VALUE(p.defined(), op, ": params[", i, "] is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i,
              "] is sparse; SparseAdam requires dense parameter tensors");
  TORCH_CHECK(p.device().type() == device_type, op, ": params[", i, "] is on ", p.device(),
              "; this is the ", device_type == c10::DeviceType::CPU ? "CPU" : "CUDA", " kernel");
  TORCH_CHECK_TYPE(!p.is_complex(), op, ": params[", i,
                   "] is complex; SparseAdam does not support complex parameters");
  TORCH_CHECK_TYPE(is_supported_float(p.scalar_type()), op, ": params[", i, "] has dtype ",
                   p.scalar_type(), "; supported: float32, float64, bfloat16, float16");
  TORCH_CHECK_VALUE(g.defined(), op, ": grads[", i, "] is undefined");
  TORCH_CHECK(g.layout() == at::kSparse,
              "SparseAdam does not support dense gradients, please consider Adam instead");
  CooGrad coo = check_coo_grad(op, p, g, i);
  check_like_param(op, p, exp_avgs[i], "exp_avgs", i);
  check_like_param(op, p, exp_avg_sqs[i], "exp_avg_sqs", i);
  TORCH_CHECK_VALUE(steps[i] >= 1, op, ": steps[", i, "] is ", steps[i],
                    "; expected the step count after this step's increment (>= 1)");
  writes.add(p, "params", i);
  writes.add(exp_avgs[i], "exp_avgs", i);
  writes.add(exp_avg_sqs[i], "exp_avg_sqs", i);
  return coo;
}

// step_size = lr * sqrt(1 - beta2^step) / (1 - beta1^step) for a param at `step`. With a Tensor
// lr, torch.optim.SparseAdam computes it as tensor arithmetic in the lr tensor's dtype
// (lr * math.sqrt(bc2) / bc1): run the same two ops.
inline double sparse_adam_step_size(double lr, const std::optional<at::Tensor>& lr_host,
                                    double beta1, double beta2, int64_t step) {
  if (!lr_host.has_value()) {
    return math::sparse_adam_step_size(lr, beta1, beta2, static_cast<double>(step));
  }
  const math::SparseAdamBiasCorrections b =
      math::sparse_adam_bias_corrections(beta1, beta2, static_cast<double>(step));
  return lr_host->reshape({}).mul(b.sqrt_bias_correction2).div(b.bias_correction1).item<double>();
}

}  // namespace ops
}  // namespace pyoptim
