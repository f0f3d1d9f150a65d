// Meta kernels: params on the meta device (a model built with device="meta", or under
// FakeTensorMode / torch.compile, where every tensor reports device meta inside the kernel).
// They run the structural checks of the CPU and CUDA kernels (shapes, dtypes, layouts, list
// lengths; meta tensors have no values and no memory to compare) and write nothing, as
// torch.optim's step on meta params computes nothing. Step counts that really live on the CPU
// are counted, as torch counts them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "ops/adagrad_rows_args.h"
#include "ops/adam_args.h"
#include "ops/quantize_args.h"
#include "ops/checks.h"
#include "ops/dense_args.h"
#include "ops/sgd_args.h"
#include "ops/sparse_adam_args.h"

namespace pyoptim {
namespace {

// Step counts that really live on the CPU are counted, as torch counts them.
void count_host_steps(const char* op, at::TensorList state_steps,
                      const std::optional<at::Tensor>& found_inf, bool validate_only) {
  std::vector<double> steps(state_steps.size(), 0.0);
  for (size_t i = 0; i < state_steps.size(); ++i) {
    if (!state_steps[i].device().is_cpu()) continue;
    steps[i] = ops::next_step_count(op, state_steps[i], i);  // the count after this step
  }
  if (validate_only) return;
  if (found_inf.has_value() && found_inf->device().is_cpu() &&
      ops::scalar_value(*found_inf, "found_inf") != 0.0) {
    return;
  }
  for (size_t i = 0; i < state_steps.size(); ++i) {
    if (state_steps[i].device().is_cpu()) state_steps[i].fill_(steps[i]);
  }
}

void adam_meta(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
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
  constexpr const char* kOp = "pyoptim.adam_";
  ops::WriteSet writes;
  ops::check_adam_call(kOp, c10::DeviceType::Meta, params, grads, exp_avgs, exp_avg_sqs,
                       max_exp_avg_sqs, state_steps, group_sizes, hyper, flags, lr_tensors,
                       grad_scale, found_inf, master_params, sr_seeds, exp_avg_scales,
                       exp_avg_sq_scales, kahan_comps, writes);
  writes.check(kOp);  // step counts on the CPU
  count_host_steps(kOp, state_steps, found_inf, validate_only);
}

template <class Opt>
void dense_meta(at::TensorList params, at::TensorList grads, at::TensorList states,
                at::TensorList state_steps, at::IntArrayRef group_sizes,
                at::ArrayRef<double> hyper, const c10::List<bool>& flags,
                const c10::List<std::optional<at::Tensor>>& lr_tensors,
                const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& found_inf, bool validate_only) {
  const char* op = ops::dense_op_name<Opt>();
  ops::WriteSet writes;
  ops::check_dense_call<Opt>(op, c10::DeviceType::Meta, params, grads, states, state_steps,
                             group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf, writes);
  writes.check(op);  // step counts on the CPU
  count_host_steps(op, state_steps, found_inf, validate_only);
}

void sgd_meta(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
              at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
              const c10::List<bool>& flags,
              const c10::List<bool>& first_step,
              const c10::List<std::optional<at::Tensor>>& lr_tensors,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf, bool /*validate_only*/,
              const std::optional<at::TensorList>& master_list,
              const std::optional<at::TensorList>& seed_list,
              const std::optional<at::TensorList>& scale_list,
              const std::optional<at::TensorList>& comp_list) {
  ops::WriteSet writes;
  ops::check_sgd_call("pyoptim.sgd_", c10::DeviceType::Meta, params, grads, momentum_buffers,
                      group_sizes, hyper, flags, first_step, lr_tensors, grad_scale, found_inf,
                      master_list.value_or(at::TensorList()), seed_list.value_or(at::TensorList()),
                      scale_list.value_or(at::TensorList()), comp_list.value_or(at::TensorList()),
                      writes);
}

void sparse_adam_meta(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::ArrayRef<double> steps,
                      at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                      const c10::List<bool>& flags,
                      const c10::List<std::optional<at::Tensor>>& lr_tensors,
                      bool /*validate_only*/) {
  ops::WriteSet writes;
  ops::check_sparse_adam_call("pyoptim.sparse_adam_", c10::DeviceType::Meta, params, grads,
                              exp_avgs, exp_avg_sqs, steps, group_sizes, hyper, flags,
                              lr_tensors, /*read_values=*/false, writes);
}

template <bool kRowwise>
void adagrad_rows_meta(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                       at::TensorList state_steps, at::IntArrayRef group_sizes,
                       at::ArrayRef<double> hyper, const c10::List<bool>& flags,
                       const c10::List<std::optional<at::Tensor>>& lr_tensors,
                       bool validate_only) {
  const char* op = kRowwise ? "pyoptim.rowwise_adagrad_" : "pyoptim.sparse_adagrad_";
  ops::WriteSet writes;
  ops::check_adagrad_rows_call(op, kRowwise, c10::DeviceType::Meta, params, grads, state_sums,
                               state_steps, group_sizes, hyper, flags, lr_tensors,
                               /*read_values=*/false, writes);
  writes.check(op);  // step counts on the CPU
  count_host_steps(op, state_steps, std::nullopt, validate_only);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, Meta, m) {
  m.impl("adam_", &adam_meta);
  m.impl("sgd_", &sgd_meta);
  m.impl("sparse_adam_", &sparse_adam_meta);
  m.impl("sparse_adagrad_", &adagrad_rows_meta<false>);
  m.impl("rowwise_adagrad_", &adagrad_rows_meta<true>);
  m.impl("quantize_8bit", &ops::quantize_8bit_outputs);
  m.impl("dequantize_8bit", &ops::dequantize_8bit_output);
  for_each_dense([&](auto opt) { m.impl(decltype(opt)::kName, &dense_meta<decltype(opt)>); });
}

// Sparse meta gradients carry the SparseMeta key.
TORCH_LIBRARY_IMPL(pyoptim, SparseMeta, m) {
  m.impl("adam_", &adam_meta);
  m.impl("sgd_", &sgd_meta);
  m.impl("sparse_adam_", &sparse_adam_meta);
  m.impl("sparse_adagrad_", &adagrad_rows_meta<false>);
  m.impl("rowwise_adagrad_", &adagrad_rows_meta<true>);
}

}  // namespace pyoptim
