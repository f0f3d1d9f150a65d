// sparse_adam_'s arguments, shared by its CPU, CUDA and Meta kernels: the groups'
// hyper-parameters, every structural check (Note [All-or-nothing step] in ops/groups.h: nothing
// here writes) and each param's step size.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "ops/adam_args.h"
#include "ops/checks.h"
#include "ops/groups.h"
#include "ops/sparse_rows.h"
#include "pyoptim/math/sparse_adam.h"

namespace pyoptim {
namespace ops {

// A group's entries in sparse_adam_'s `hyper` and `flags` (Note [Param groups in one call]), in
// this order.
struct SparseAdamGroup {
  double lr, beta1, beta2, eps, weight_decay;
  bool maximize;
  std::optional<at::Tensor> lr_host;  // a Tensor lr, copied to the host (read once per call)
};

constexpr size_t kSparseAdamHypers = 5;
constexpr size_t kSparseAdamFlags = 1;

struct SparseAdamCall {
  std::vector<SparseAdamGroup> groups;
  std::vector<size_t> group;
  std::vector<CooGrad> coo;
  const SparseAdamGroup& of(size_t i) const { return groups[group[i]]; }
};

// `read_values`: copy Tensor lrs to the host and check their values (CPU and CUDA kernels; the
// Meta kernel reads nothing).
inline SparseAdamCall check_sparse_adam_call(
    const char* op, c10::DeviceType backend, at::TensorList params, at::TensorList grads,
    at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::ArrayRef<double> steps,
    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, const c10::List<bool>& flags,
    const c10::List<std::optional<at::Tensor>>& lr_tensors, bool read_values,
    WriteSet& writes) {
  const size_t n = params.size();
  const Groups groups(op, group_sizes, n);
  groups.check_packed(hyper.size(), kSparseAdamHypers, flags.size(), kSparseAdamFlags);
  check_list_size(op, grads.size(), n, "grads", "param");
  check_list_size(op, exp_avgs.size(), n, "exp_avgs", "param");
  check_list_size(op, exp_avg_sqs.size(), n, "exp_avg_sqs", "param");
  check_list_size(op, steps.size(), n, "steps", "param");

  c10::Device device(backend);
  if (n > 0 && params[0].defined()) device = params[0].device();
  const auto lr_ts = groups.lr_tensors(lr_tensors, device);
  SparseAdamCall call;
  call.groups.resize(groups.count());
  for (size_t g = 0; g < groups.count(); ++g) {
    SparseAdamGroup& grp = call.groups[g];
    const double* h = hyper.data() + g * kSparseAdamHypers;
    grp = SparseAdamGroup{h[0], h[1], h[2], h[3], h[4], flags.get(g * kSparseAdamFlags),
                          std::nullopt};
    if (lr_ts[g].has_value() && read_values) {
      // the op syncs anyway (it reads the indices): one copy of a Tensor lr per call
      grp.lr_host = lr_ts[g]->cpu();
      grp.lr = scalar_value(*grp.lr_host, "lr");
    }
    if (!lr_ts[g].has_value() || read_values) check_lr(grp.lr);
    check_adam_hyper(grp.eps, grp.beta1, grp.beta2, grp.weight_decay);
  }

  call.group.resize(n);
  call.coo.resize(n);
  for (size_t i = 0; i < n; ++i) {
    call.group[i] = groups.of(i);
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK_VALUE(p.defined(), op, ": params[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i,
                "] is sparse; SparseAdam requires dense parameter tensors");
    TORCH_CHECK_TYPE(!p.is_complex(), op, ": params[", i,
                     "] is complex; SparseAdam does not support complex parameters");
    check_param(op, p, i, backend, device);
    TORCH_CHECK_VALUE(g.defined(), op, ": grads[", i, "] is undefined");
    TORCH_CHECK(g.layout() == at::kSparse,
                "SparseAdam does not support dense gradients, please consider Adam instead");
    call.coo[i] = check_coo_grad(op, p, g, i);
    check_like_param(op, p, exp_avgs[i], "exp_avgs", i);
    check_like_param(op, p, exp_avg_sqs[i], "exp_avg_sqs", i);
    check_step_count(op, steps[i], "steps", i);
    writes.add(p, "params", i);
    writes.add(exp_avgs[i], "exp_avgs", i);
    writes.add(exp_avg_sqs[i], "exp_avg_sqs", i);
  }
  return call;
}

// step_size = lr * sqrt(1 - beta2^step) / (1 - beta1^step) for a param at `step` (the count after
// this step's increment). With a Tensor lr, torch.optim.SparseAdam computes it as tensor
// arithmetic in the lr tensor's dtype (lr * math.sqrt(bc2) / bc1): the same two ops run on the
// host copy of the lr, once per (group, step count) of the call, usually once per group.
class StepSizes {
 public:
  double get(const SparseAdamGroup& g, size_t group, double step) {
    for (const Entry& e : entries_) {
      if (e.group == group && e.step == step) return e.value;
    }
    double value;
    if (!g.lr_host.has_value()) {
      value = math::sparse_adam_step_size(g.lr, g.beta1, g.beta2, step);
    } else {
      const math::SparseAdamBiasCorrections b =
          math::sparse_adam_bias_corrections(g.beta1, g.beta2, step);
      value = g.lr_host->reshape({})
                  .mul(b.sqrt_bias_correction2)
                  .div(b.bias_correction1)
                  .item<double>();
    }
    entries_.push_back(Entry{group, step, value});
    return value;
  }

 private:
  struct Entry {
    size_t group;
    double step;
    double value;
  };
  std::vector<Entry> entries_;
};

// The coefficients of param i (of storage type S) of a checked call at `step` (its count after
// this step's increment), narrowed with torch's overflow check for S.
template <class S>
math::SparseAdamCoeffs<math::opmath_t<S>> sparse_adam_coeffs(const SparseAdamCall& call, size_t i,
                                                             double step, StepSizes& sizes) {
  using T = math::opmath_t<S>;
  const SparseAdamGroup& g = call.of(i);
  return math::make_sparse_adam_coeffs<T>(g.lr, g.beta1, g.beta2, g.eps, g.weight_decay,
                                          sizes.get(g, call.group[i], step),
                                          CheckedNarrow<T, S>());
}

}  // namespace ops
}  // namespace pyoptim
