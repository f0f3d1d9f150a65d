// sgd_'s arguments, shared by its CPU, CUDA and Meta kernels: the groups' hyper-parameters and
// every structural check, for dense and sparse (COO) gradients alike (Note [All-or-nothing step]
// in ops/groups.h: nothing here writes). Index ranges and host values each backend checks itself.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/groups.h"
#include "ops/quantize_args.h"
#include "ops/sparse_rows.h"
#include "pyoptim/cpu/isa.h"

namespace pyoptim {
namespace ops {

// torch.optim.SGD's messages (lr is checked where its value is known).
inline void check_sgd_hyper(double momentum, double dampening, double weight_decay,
                            bool nesterov) {
  TORCH_CHECK_VALUE(momentum >= 0.0, "Invalid momentum value: ", momentum);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "Invalid weight_decay value: ", weight_decay);
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0.0 && dampening == 0.0),
                    "Nesterov momentum requires a momentum and zero dampening");
}

// A group's entries in sgd_'s `hyper` and `flags` (Note [Param groups in one call]), in this
// order.
struct SgdGroup {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, master_weights, stochastic_rounding, bf16_states, q8_states, kahan;
  std::optional<at::Tensor> lr_tensor;  // a Tensor lr: its value replaces lr
  bool has_momentum() const { return momentum != 0.0; }
  cpu::StateFormat states() const {  // the momentum buffer's format (float32 params)
    return bf16_states ? cpu::StateFormat::kBf16
                       : (q8_states ? cpu::StateFormat::kQ8 : cpu::StateFormat::kParam);
  }
  bool seeded() const { return stochastic_rounding || bf16_states || q8_states; }
};

constexpr size_t kSgdHypers = 4;
constexpr size_t kSgdFlags = 7;

// One sgd_ call, checked: per group its settings; per tensor its group, its momentum buffer's
// entry (-1 without momentum), whether that buffer takes its first step, and for a sparse
// gradient its checked COO parts.
struct SgdCall {
  c10::Device device{c10::kCPU};
  std::vector<SgdGroup> groups;
  std::vector<size_t> group;
  // master: entry in master_params, -1 outside master groups; seed: in sr_seeds, -1 outside
  // stochastic_rounding / state groups; scale: in buffer_scales, -1 outside q8_states groups;
  // comp: in kahan_comps, -1 outside kahan groups
  std::vector<int64_t> buf, master, seed, scale, comp;
  std::vector<bool> first;
  std::vector<std::optional<CooGrad>> sparse;
  const SgdGroup& of(size_t i) const { return groups[group[i]]; }
};

inline SgdCall check_sgd_call(
    const char* op, c10::DeviceType backend, at::TensorList params, at::TensorList grads,
    at::TensorList momentum_buffers, at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
    const c10::List<bool>& flags, const c10::List<bool>& first_step,
    const c10::List<std::optional<at::Tensor>>& lr_tensors,
    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
    at::TensorList master_params, at::TensorList sr_seeds, at::TensorList buffer_scales,
    at::TensorList kahan_comps, WriteSet& writes) {
  const size_t n = params.size();
  const Groups groups(op, group_sizes, n);
  groups.check_packed(hyper.size(), kSgdHypers, flags.size(), kSgdFlags);
  check_list_size(op, grads.size(), n, "grads", "param");

  SgdCall call;
  call.device = c10::Device(backend);
  if (n > 0 && params[0].defined()) call.device = params[0].device();
  const auto lr_ts = groups.lr_tensors(lr_tensors, call.device);
  std::vector<bool> has_buf(groups.count()), mw(groups.count()), seeded(groups.count()),
      q8(groups.count()), kahan(groups.count());
  call.groups.resize(groups.count());
  for (size_t g = 0; g < groups.count(); ++g) {
    const double* h = hyper.data() + g * kSgdHypers;
    const size_t f = g * kSgdFlags;
    SgdGroup& s = call.groups[g];
    s = SgdGroup{h[0],
                 h[1],
                 h[2],
                 h[3],
                 flags.get(f),
                 flags.get(f + 1),
                 flags.get(f + 2),
                 flags.get(f + 3),
                 flags.get(f + 4),
                 flags.get(f + 5),
                 flags.get(f + 6),
                 lr_ts[g]};
    check_sgd_hyper(s.momentum, s.dampening, s.weight_decay, s.nesterov);
    if (!lr_ts[g].has_value()) TORCH_CHECK_VALUE(s.lr >= 0.0, "Invalid learning rate: ", s.lr);
    TORCH_CHECK_VALUE(!s.master_weights || s.has_momentum(), op, ": param group ", g,
                      " has master_weights without momentum; master weights are for SGD with "
                      "momentum");
    const bool reduced = s.bf16_states || s.q8_states;
    TORCH_CHECK_VALUE(int(s.master_weights) + int(s.stochastic_rounding) + int(reduced) <= 1 &&
                          !(s.bf16_states && s.q8_states),
                      op, ": param group ", g, " combines master_weights, stochastic_rounding "
                      "and reduced-precision states; a group has at most one");
    TORCH_CHECK_VALUE(!s.seeded() || s.has_momentum(), op, ": param group ", g,
                      " has stochastic_rounding or reduced-precision states without momentum; "
                      "they are for SGD with momentum");
    TORCH_CHECK_VALUE(!s.kahan || !(s.master_weights || s.stochastic_rounding || reduced), op,
                      ": param group ", g, " has kahan with master_weights, stochastic_rounding "
                      "or reduced-precision states; a group's params are stored one way");
    has_buf[g] = s.has_momentum();
    mw[g] = s.master_weights;
    seeded[g] = s.seeded();
    q8[g] = s.q8_states;
    kahan[g] = s.kahan;
  }
  call.master = positions_in_partial_list(op, groups, n, mw, master_params.size(),
                                          "master_params", "param of a master_weights group");
  call.buf = positions_in_partial_list(op, groups, n, has_buf, momentum_buffers.size(),
                                       "momentum_buffers", "param of a group with momentum");
  call.seed = positions_in_partial_list(op, groups, n, seeded, sr_seeds.size(), "sr_seeds",
                                        "param of a stochastic_rounding, bf16_states or "
                                        "q8_states group");
  call.scale = positions_in_partial_list(op, groups, n, q8, buffer_scales.size(),
                                         "buffer_scales", "param of a q8_states group");
  call.comp = positions_in_partial_list(op, groups, n, kahan, kahan_comps.size(), "kahan_comps",
                                        "param of a kahan group");
  TORCH_CHECK_VALUE(first_step.size() == 0 || first_step.size() == momentum_buffers.size(), op,
                    ": first_step has ", first_step.size(),
                    " entries; expected none or one per momentum buffer (",
                    momentum_buffers.size(), ")");
  check_scalar_arg(op, grad_scale, "grad_scale", call.device);
  check_scalar_arg(op, found_inf, "found_inf", call.device);

  call.group.resize(n);
  call.first.assign(n, false);
  call.sparse.resize(n);
  for (size_t i = 0; i < n; ++i) {
    call.group[i] = groups.of(i);
    const at::Tensor& p = params[i];
    check_param(op, p, i, backend, call.device);
    const at::Tensor& g = grads[i];
    TORCH_CHECK_VALUE(g.defined(), op, ": grads[", i, "] is undefined");
    const bool master = call.master[i] >= 0;
    if (master) {
      TORCH_CHECK_VALUE(p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf, op,
                        ": params[", i, "] has dtype ", p.scalar_type(),
                        "; master_weights is for bfloat16 and float16 params");
      TORCH_CHECK_VALUE(g.layout() != at::kSparse, op, ": grads[", i,
                        "] is sparse; master_weights takes dense grads");
      check_like_param(op, p, master_params[call.master[i]], "master_params", i, at::kFloat);
      writes.add(master_params[call.master[i]], "master_params", i);
    }
    const SgdGroup& grp = call.groups[call.group[i]];
    at::ScalarType buf_dtype = master ? at::kFloat : p.scalar_type();
    if (call.seed[i] >= 0) {
      const bool reduced = grp.bf16_states || grp.q8_states;
      TORCH_CHECK_VALUE(p.scalar_type() == (reduced ? at::kFloat : at::kBFloat16), op,
                        ": params[", i, "] has dtype ", p.scalar_type(),
                        reduced ? "; reduced-precision states are for float32 params"
                                : "; stochastic_rounding is for bfloat16 params");
      TORCH_CHECK_VALUE(g.layout() != at::kSparse, op, ": grads[", i, "] is sparse; ",
                        reduced ? "reduced-precision states" : "stochastic_rounding",
                        " take dense grads");
      check_seed(op, sr_seeds, call.seed[i], backend);
      writes.add(sr_seeds[call.seed[i]], "sr_seeds", i);
      if (reduced) buf_dtype = grp.bf16_states ? at::kBFloat16 : at::kChar;
    }
    if (call.scale[i] >= 0) check_block_scales(op, buffer_scales, call.scale[i], p, i, writes);
    if (call.comp[i] >= 0) {  // Note [Kahan-compensated 16-bit params]: with or without momentum
      TORCH_CHECK_VALUE(p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf, op,
                        ": params[", i, "] has dtype ", p.scalar_type(),
                        "; kahan is for bfloat16 and float16 params");
      TORCH_CHECK_VALUE(g.layout() != at::kSparse, op, ": grads[", i,
                        "] is sparse; kahan takes dense grads");
      check_like_param(op, p, kahan_comps[call.comp[i]], "kahan_comps", i);
      writes.add(kahan_comps[call.comp[i]], "kahan_comps", i);
    }
    if (g.layout() == at::kSparse) {
      call.sparse[i] = check_coo_grad(op, p, g, i);
    } else {
      check_like_param(op, p, g, "grads", i);
      writes.read(g, "grads", i);
    }
    writes.add(p, "params", i);
    if (call.buf[i] >= 0) {
      const at::Tensor& b = momentum_buffers[call.buf[i]];
      check_like_param(op, p, b, "momentum_buffers", i, buf_dtype);
      writes.add(b, "momentum_buffers", i);
      if (first_step.size() > 0) call.first[i] = first_step.get(call.buf[i]);
    }
  }
  return call;
}

// How ATen's CPU `param.add_(grad, alpha=-lr)` (torch 2.14's add_out_dense_sparse_cpu) adds a
// sparse grad, torch's plain SGD step (Note [Sparse SGD] in ops/sgd_cpu.cpp); `grad` is the
// gradient before maximize negates it. Shared by the CPU and CUDA ops: both apply a plain sparse
// step the same way, so their results agree bitwise.
inline cpu::PlainSparse aten_plain_sparse(const at::Tensor& param, const CooGrad& grad,
                                          bool maximize) {
  const at::Tensor& v = grad.values;
  bool values_contiguous = v.is_contiguous();
  if (maximize && !values_contiguous && !v.is_non_overlapping_and_dense()) {
    // -grad's values: a new tensor in the layout TensorIterator gives it (strides of v where v
    // is dense, else sorted by v's strides), which may be contiguous
    values_contiguous = v.neg().is_contiguous();
  }
  const bool coalesced = grad.coalesced || grad.nnz == 1;  // ATen: is_coalesced() || nnz == 1
  if (param.is_contiguous() && values_contiguous) {
    if (coalesced && v.dim() == 1) return cpu::PlainSparse::kRoundProduct;  // non-hybrid
    if (coalesced || grad.sparse_dim > 0) return cpu::PlainSparse::kInOrder;
  }
  return cpu::PlainSparse::kSumFirst;  // grad.coalesce(), then one add_ per row
}

}  // namespace ops
}  // namespace pyoptim
