// The arguments of a dense optimizer's op (Note [Dense optimizers] in pyoptim/dense.h), shared
// by its CPU, CUDA and Meta kernels: every structural check and each group's hyper-parameter
// checks (Note [All-or-nothing step] in ops/groups.h: nothing here writes). What a backend reads
// on the host (Tensor lrs, step counts, grad_scale) it checks itself.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <string>
#include <vector>

#include "ops/checks.h"
#include "ops/groups.h"
#include "pyoptim/dense.h"

namespace pyoptim {
namespace ops {

inline void check_hyper(const math::HyperCheck& check, double x) {
  const bool ok = check.kind == math::HyperCheck::kNonNegative ? x >= 0.0 : (x >= 0.0 && x < 1.0);
  TORCH_CHECK_VALUE(ok, check.message, x);
}

// One call of Opt's op, checked: per tensor its group; per group its hyper-parameters (hyper[0]
// is lr), its flag bits and its Tensor lr, if any.
struct DenseCall {
  c10::Device device{c10::kCPU};
  size_t n = 0;
  std::vector<size_t> group;
  std::vector<std::vector<double>> hyper;
  std::vector<unsigned> flags;
  std::vector<std::optional<at::Tensor>> lr_tensor;
};

template <class Opt>
DenseCall check_dense_call(const char* op, c10::DeviceType backend, at::TensorList params,
                           at::TensorList grads, at::TensorList states,
                           at::TensorList state_steps, at::IntArrayRef group_sizes,
                           at::ArrayRef<double> hyper, const c10::List<bool>& flags,
                           const c10::List<std::optional<at::Tensor>>& lr_tensors,
                           const std::optional<at::Tensor>& grad_scale,
                           const std::optional<at::Tensor>& found_inf, WriteSet& writes) {
  const size_t n = params.size();
  const Groups groups(op, group_sizes, n);
  const size_t num_groups = groups.count();
  groups.check_packed(hyper.size(), Opt::kHypers, flags.size(), Opt::kFlags);
  check_list_size(op, grads.size(), n, "grads", "param");
  check_list_size(op, states.size(), n * Opt::kStates, "states", "state tensor of each param");
  check_list_size(op, state_steps.size(), Opt::kHasStep ? n : 0, "state_steps", "param");

  DenseCall call;
  call.n = n;
  if (n > 0 && params[0].defined()) call.device = params[0].device();
  call.lr_tensor = groups.lr_tensors(lr_tensors, call.device);
  call.hyper.resize(num_groups);
  call.flags.assign(num_groups, 0u);
  for (size_t g = 0; g < num_groups; ++g) {
    call.hyper[g].assign(hyper.begin() + g * Opt::kHypers, hyper.begin() + (g + 1) * Opt::kHypers);
    for (int k = 0; k < Opt::kHypers; ++k) {
      if (k == 0 && call.lr_tensor[g].has_value()) continue;  // checked where its value is read
      check_hyper(Opt::kChecks[k], call.hyper[g][k]);
    }
    for (int b = 0; b < Opt::kFlags; ++b) {
      if (flags.get(g * Opt::kFlags + b)) call.flags[g] |= 1u << b;
    }
  }
  check_scalar_arg(op, grad_scale, "grad_scale", call.device);
  check_scalar_arg(op, found_inf, "found_inf", call.device);

  call.group.resize(n);
  for (size_t i = 0; i < n; ++i) {
    call.group[i] = groups.of(i);
    const at::Tensor& p = params[i];
    check_param(op, p, i, backend, call.device);
    TORCH_CHECK(grads[i].layout() == at::kStrided, op, ": grads[", i,
                "] is sparse; this optimizer takes dense gradients");
    check_like_param(op, p, grads[i], "grads", i);
    writes.read(grads[i], "grads", i);
    writes.add(p, "params", i);
    for (int k = 0; k < Opt::kStates; ++k) {
      const at::Tensor& s = states[k * n + i];
      check_like_param(op, p, s, "states", k * n + i, i);
      writes.add(s, "states", k * n + i);
    }
    if (Opt::kHasStep) {
      const at::Tensor& s = state_steps[i];
      check_step_tensor(op, s, p, i);
      writes.add(s, "state_steps", i);
    }
  }
  return call;
}

// Opt's op as its errors name it: "pyoptim.<kName>", as pyoptim.adam_ and the other ops do.
template <class Opt>
const char* dense_op_name() {
  static const std::string name = std::string("pyoptim.") + Opt::kName;
  return name.c_str();
}

// The schema of Opt's op (Note [Dense optimizers]).
template <class Opt>
std::string dense_schema() {
  return std::string(Opt::kName) +
         "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] states, Tensor(c!)[] state_steps, "
         "int[] group_sizes, float[] hyper, bool[] flags, Tensor?[] lr_tensors, "
         "Tensor? grad_scale=None, Tensor? found_inf=None, bool validate_only=False) -> ()";
}

}  // namespace ops
}  // namespace pyoptim
