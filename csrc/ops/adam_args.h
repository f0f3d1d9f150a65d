// adam_'s arguments, shared by its CPU, CUDA and Meta kernels: the groups' hyper-parameters and
// every structural check (Note [All-or-nothing step] in ops/groups.h: nothing here writes).
// What each backend reads on the host (lr tensors, step counts, grad_scale) it checks itself.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/groups.h"
#include "pyoptim/cpu/isa.h"
#include "ops/quantize_args.h"

namespace pyoptim {
namespace ops {

// torch.optim.Adam's hyper-parameter checks (lr is checked where its value is known).
inline void check_adam_hyper(double eps, double beta1, double beta2, double weight_decay) {
  TORCH_CHECK_VALUE(eps >= 0.0, "Invalid epsilon value: ", eps);
  TORCH_CHECK_VALUE(beta1 >= 0.0 && beta1 < 1.0, "Invalid beta parameter at index 0: ", beta1);
  TORCH_CHECK_VALUE(beta2 >= 0.0 && beta2 < 1.0, "Invalid beta parameter at index 1: ", beta2);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "Invalid weight_decay value: ", weight_decay);
}

inline void check_lr(double lr) { TORCH_CHECK_VALUE(lr >= 0.0, "Invalid learning rate: ", lr); }

// A group's entries in adam_'s `hyper` and `flags` (Note [Param groups in one call]), in this
// order. master_weights / stochastic_rounding: Note [Master weights and stochastic rounding] in
// math/stochastic_round.h; bf16_states / q8_states: Note [Reduced-precision optimizer states] in
// math/quantize.h.
struct AdamGroup {
  double lr, beta1, beta2, weight_decay, eps;
  bool amsgrad, maximize, decoupled, master_weights, stochastic_rounding, bf16_states, q8_states,
      kahan;
  std::optional<at::Tensor> lr_tensor;  // a Tensor lr: its value replaces lr
  // the moments' storage for float32 params
  cpu::StateFormat states() const {
    return bf16_states ? cpu::StateFormat::kBf16
                       : (q8_states ? cpu::StateFormat::kQ8 : cpu::StateFormat::kParam);
  }
  // the groups whose params have an sr_seed: their bits key a stochastic rounding
  bool seeded() const { return stochastic_rounding || bf16_states || q8_states; }
};

constexpr size_t kAdamHypers = 5;
constexpr size_t kAdamFlags = 8;

// One adam_ call, checked: per group its settings, per tensor its group and its entries in
// max_exp_avg_sqs (-1 outside amsgrad groups), master_params (-1 outside master_weights
// groups), sr_seeds (-1 outside stochastic_rounding, bf16_states and q8_states groups) and the
// two scale lists (-1 outside q8_states groups) and kahan_comps (-1 outside kahan groups).
struct AdamCall {
  c10::Device device{c10::kCPU};  // of every param
  std::vector<AdamGroup> groups;
  std::vector<size_t> group;
  std::vector<int64_t> vmax, master, seed, scale, comp;
  const AdamGroup& of(size_t i) const { return groups[group[i]]; }
};

// Every structural check of an adam_ call on the backend `backend` (CPU, CUDA or Meta): list
// lengths, each group's hyper-parameters, and each tensor's device, dtype, shape and layout.
// Records everything the step writes in `writes` (the caller runs writes.check).
inline AdamCall check_adam_call(
    const char* op, c10::DeviceType backend, at::TensorList params, at::TensorList grads,
    at::TensorList exp_avgs, at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
    at::TensorList state_steps, at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
    const c10::List<bool>& flags, const c10::List<std::optional<at::Tensor>>& lr_tensors,
    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::TensorList master_params, at::TensorList sr_seeds, at::TensorList exp_avg_scales,
    at::TensorList exp_avg_sq_scales, at::TensorList kahan_comps, WriteSet& writes) {
  const size_t n = params.size();
  const Groups groups(op, group_sizes, n);
  groups.check_packed(hyper.size(), kAdamHypers, flags.size(), kAdamFlags);
  check_list_size(op, grads.size(), n, "grads", "param");
  check_list_size(op, exp_avgs.size(), n, "exp_avgs", "param");
  check_list_size(op, exp_avg_sqs.size(), n, "exp_avg_sqs", "param");
  check_list_size(op, state_steps.size(), n, "state_steps", "param");

  AdamCall call;
  call.device = c10::Device(backend);
  if (n > 0 && params[0].defined()) call.device = params[0].device();
  const auto lr_ts = groups.lr_tensors(lr_tensors, call.device);
  std::vector<bool> ams(groups.count()), mw(groups.count()), seeded(groups.count()),
      q8(groups.count()), kahan(groups.count());
  call.groups.resize(groups.count());
  for (size_t g = 0; g < groups.count(); ++g) {
    const double* h = hyper.data() + g * kAdamHypers;
    const size_t f = g * kAdamFlags;
    AdamGroup& a = call.groups[g];
    a = AdamGroup{h[0],          h[1],          h[2],          h[3],          h[4],
                  flags.get(f),  flags.get(f + 1), flags.get(f + 2), flags.get(f + 3),
                  flags.get(f + 4), flags.get(f + 5), flags.get(f + 6), flags.get(f + 7),
                  lr_ts[g]};
    check_adam_hyper(a.eps, a.beta1, a.beta2, a.weight_decay);
    if (!lr_ts[g].has_value()) check_lr(a.lr);
    TORCH_CHECK_VALUE(!(a.master_weights && a.stochastic_rounding), op, ": param group ", g,
                      " has master_weights and stochastic_rounding, which cannot be combined: "
                      "stochastic rounding is for params stored without master weights (a "
                      "master-weights param is rounded to nearest from its float32 master)");
    const bool reduced = a.bf16_states || a.q8_states;
    TORCH_CHECK_VALUE(!(a.bf16_states && a.q8_states), op, ": param group ", g,
                      " has bf16_states and q8_states; a group's moments have one format");
    TORCH_CHECK_VALUE(!reduced || !(a.amsgrad || a.master_weights || a.stochastic_rounding), op,
                      ": param group ", g, " has reduced-precision states (",
                      a.bf16_states ? "bf16_states" : "q8_states",
                      ") with amsgrad, master_weights or stochastic_rounding, which they do not "
                      "support (Note [Reduced-precision optimizer states])");
    TORCH_CHECK_VALUE(!a.kahan || !(a.master_weights || a.stochastic_rounding || reduced), op,
                      ": param group ", g, " has kahan with master_weights, stochastic_rounding "
                      "or reduced-precision states; a group's params are stored one way");
    ams[g] = a.amsgrad;
    mw[g] = a.master_weights;
    kahan[g] = a.kahan;
    seeded[g] = a.seeded();
    q8[g] = a.q8_states;
  }
  call.vmax = positions_in_partial_list(op, groups, n, ams, max_exp_avg_sqs.size(),
                                        "max_exp_avg_sqs", "param of an amsgrad group");
  call.master = positions_in_partial_list(op, groups, n, mw, master_params.size(),
                                          "master_params", "param of a master_weights group");
  call.seed = positions_in_partial_list(op, groups, n, seeded, sr_seeds.size(), "sr_seeds",
                                        "param of a stochastic_rounding, bf16_states or "
                                        "q8_states group");
  call.scale = positions_in_partial_list(op, groups, n, q8, exp_avg_scales.size(),
                                         "exp_avg_scales", "param of a q8_states group");
  check_list_size(op, exp_avg_sq_scales.size(), exp_avg_scales.size(), "exp_avg_sq_scales",
                  "exp_avg_scales entry");
  call.comp = positions_in_partial_list(op, groups, n, kahan, kahan_comps.size(), "kahan_comps",
                                        "param of a kahan group");
  check_scalar_arg(op, grad_scale, "grad_scale", call.device);
  check_scalar_arg(op, found_inf, "found_inf", call.device);

  call.group.resize(n);
  for (size_t i = 0; i < n; ++i) {
    call.group[i] = groups.of(i);
    const at::Tensor& p = params[i];
    check_param(op, p, i, backend, call.device);
    TORCH_CHECK(grads[i].layout() == at::kStrided,
                "Adam does not support sparse gradients, please consider SparseAdam instead");
    check_like_param(op, p, grads[i], "grads", i);
    writes.read(grads[i], "grads", i);
    // with master weights, the master and the moments are float32 (the grad is the param's)
    const bool master = call.master[i] >= 0;
    const AdamGroup& grp = call.groups[call.group[i]];
    at::ScalarType state_dtype = master ? at::kFloat : p.scalar_type();
    at::ScalarType sq_dtype = state_dtype;
    if (grp.bf16_states || grp.q8_states) {
      TORCH_CHECK_VALUE(p.scalar_type() == at::kFloat, op, ": params[", i, "] has dtype ",
                        p.scalar_type(), "; reduced-precision states are for float32 params");
      state_dtype = grp.bf16_states ? at::kBFloat16 : at::kChar;
      sq_dtype = grp.bf16_states ? at::kBFloat16 : at::kByte;
    }
    if (call.scale[i] >= 0) {  // q8_states: one float32 scale per block of each moment
      check_block_scales(op, exp_avg_scales, call.scale[i], p, i, writes, "exp_avg_scales");
      check_block_scales(op, exp_avg_sq_scales, call.scale[i], p, i, writes, "exp_avg_sq_scales");
    }
    if (call.comp[i] >= 0) {
      TORCH_CHECK_VALUE(p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf, op,
                        ": params[", i, "] has dtype ", p.scalar_type(),
                        "; kahan is for bfloat16 and float16 params");
      check_like_param(op, p, kahan_comps[call.comp[i]], "kahan_comps", i);
      writes.add(kahan_comps[call.comp[i]], "kahan_comps", i);
    }
    if (master) {
      TORCH_CHECK_VALUE(p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf, op,
                        ": params[", i, "] has dtype ", p.scalar_type(),
                        "; master_weights is for bfloat16 and float16 params");
      check_like_param(op, p, master_params[call.master[i]], "master_params", i, at::kFloat);
    }
    if (call.seed[i] >= 0) {
      TORCH_CHECK_VALUE(!grp.stochastic_rounding || p.scalar_type() == at::kBFloat16, op,
                        ": params[", i, "] has dtype ", p.scalar_type(),
                        "; stochastic_rounding is for bfloat16 params");
      check_seed(op, sr_seeds, call.seed[i], backend);
    }
    check_like_param(op, p, exp_avgs[i], "exp_avgs", i, state_dtype);
    check_like_param(op, p, exp_avg_sqs[i], "exp_avg_sqs", i, sq_dtype);
    if (call.vmax[i] >= 0) {
      check_like_param(op, p, max_exp_avg_sqs[call.vmax[i]], "max_exp_avg_sqs", i, state_dtype);
    }
    const at::Tensor& s = state_steps[i];
    TORCH_CHECK_VALUE(s.defined() && s.sym_numel() == 1 && s.layout() == at::kStrided, op,
                      ": state_steps[", i, "] must be a one-element tensor");
    TORCH_CHECK_TYPE(at::isFloatingType(s.scalar_type()) ||
                         at::isIntegralType(s.scalar_type(), /*includeBool=*/false),
                     op, ": state_steps[", i, "] has dtype ", s.scalar_type(),
                     "; a step count is a real number");
    TORCH_CHECK(s.device().is_cpu() || s.device() == p.device(), op, ": state_steps[", i,
                "] is on ", s.device(), " but params[", i, "] is on ", p.device(),
                "; a step count lives on the CPU or on its param's device");
    writes.add(p, "params", i);
    writes.add(exp_avgs[i], "exp_avgs", i);
    writes.add(exp_avg_sqs[i], "exp_avg_sqs", i);
    if (call.vmax[i] >= 0) writes.add(max_exp_avg_sqs[call.vmax[i]], "max_exp_avg_sqs", i);
    if (master) writes.add(master_params[call.master[i]], "master_params", i);
    writes.add(s, "state_steps", i);
  }
  return call;
}

}  // namespace ops
}  // namespace pyoptim
