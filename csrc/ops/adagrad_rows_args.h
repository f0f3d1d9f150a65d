// The arguments of sparse_adagrad_ (torch.optim.Adagrad's step for sparse gradients) and
// rowwise_adagrad_ (pyoptim.RowWiseAdagrad), shared by their CPU, CUDA and Meta kernels: every
// structural check (Note [All-or-nothing step] in ops/groups.h: nothing here writes), each
// group's hyper-parameters and each param's row layout.
//
// Both ops have one schema shape (library.cpp): per group, hyper = (lr, lr_decay, weight_decay,
// eps); flags = (maximize) for sparse_adagrad_, (maximize, decoupled) for rowwise_adagrad_.
// sparse_adagrad_: every grad sparse COO, state_sums shaped like the params, weight_decay 0.
// rowwise_adagrad_: each grad dense or sparse COO with one sparse dim; a param's rows are its
// first dim (a 0-dim param is one row), its state sum is [rows] in the math type (float32 for
// float32 / bfloat16 / float16 params, float64 for float64).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/dense_args.h"
#include "ops/groups.h"
#include "ops/sparse_rows.h"
#include "pyoptim/math/adagrad.h"

namespace pyoptim {
namespace ops {

constexpr size_t kAdagradRowsHypers = 4;  // lr, lr_decay, weight_decay, eps

struct AdagradRowsGroup {
  double lr, lr_decay, weight_decay, eps;
  bool maximize;
  bool decoupled;  // rowwise_adagrad_ only
};

struct AdagradRowsCall {
  c10::Device device{c10::kCPU};
  std::vector<AdagradRowsGroup> groups;
  std::vector<size_t> group;
  std::vector<bool> sparse;     // per param: a sparse COO grad
  std::vector<CooGrad> coo;     // per param with a sparse grad
  std::vector<int64_t> width;   // per param: elements per row (-1: symbolic, Meta only)
  const AdagradRowsGroup& of(size_t i) const { return groups[group[i]]; }
};

// Rows of a row-wise param: its first dim (a 0-dim param is one row).
inline c10::SymInt rowwise_rows(const at::Tensor& p) {
  return p.dim() == 0 ? c10::SymInt(1) : p.sym_size(0);
}

// `rowwise`: rowwise_adagrad_'s checks, else sparse_adagrad_'s. `read_values`: read Tensor lrs
// on the host and check them (CPU and CUDA kernels; the Meta kernel reads nothing).
inline AdagradRowsCall check_adagrad_rows_call(
    const char* op, bool rowwise, c10::DeviceType backend, at::TensorList params,
    at::TensorList grads, at::TensorList state_sums, at::TensorList state_steps,
    at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, const c10::List<bool>& flags,
    const c10::List<std::optional<at::Tensor>>& lr_tensors, bool read_values,
    WriteSet& writes) {
  const size_t n = params.size();
  const Groups groups(op, group_sizes, n);
  const size_t n_flags = rowwise ? 2 : 1;
  groups.check_packed(hyper.size(), kAdagradRowsHypers, flags.size(), n_flags);
  check_list_size(op, grads.size(), n, "grads", "param");
  check_list_size(op, state_sums.size(), n, "state_sums", "param");
  check_list_size(op, state_steps.size(), n, "state_steps", "param");

  AdagradRowsCall call;
  if (n > 0 && params[0].defined()) call.device = params[0].device();
  const auto lr_ts = groups.lr_tensors(lr_tensors, call.device);
  call.groups.resize(groups.count());
  for (size_t g = 0; g < groups.count(); ++g) {
    const double* h = hyper.data() + g * kAdagradRowsHypers;
    AdagradRowsGroup& grp = call.groups[g];
    grp = AdagradRowsGroup{h[0], h[1], h[2], h[3], flags.get(g * n_flags),
                           rowwise && flags.get(g * n_flags + 1)};
    if (lr_ts[g].has_value() && read_values) grp.lr = scalar_value(*lr_ts[g], "lr");
    for (size_t k = 0; k < kAdagradRowsHypers; ++k) {
      if (k == 0 && lr_ts[g].has_value() && !read_values) continue;  // no value to check
      check_hyper(math::Adagrad::kChecks[k], k == 0 ? grp.lr : h[k]);
    }
  }

  call.group.resize(n);
  call.sparse.resize(n);
  call.coo.resize(n);
  call.width.resize(n);
  auto as_int = [](const c10::SymInt& v) { return v.maybe_as_int().value_or(-1); };
  for (size_t i = 0; i < n; ++i) {
    call.group[i] = groups.of(i);
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    check_param(op, p, i, backend, call.device);
    TORCH_CHECK_VALUE(g.defined(), op, ": grads[", i, "] is undefined");
    call.sparse[i] = g.layout() == at::kSparse;
    if (!rowwise) {
      TORCH_CHECK(call.sparse[i], op, ": grads[", i,
                  "] is dense; this op takes sparse COO gradients (dense ones: adagrad_)");
      // torch's error, raised here before anything is written
      TORCH_CHECK(call.of(i).weight_decay == 0.0,
                  "weight_decay option is not compatible with sparse gradients");
      call.coo[i] = check_coo_grad(op, p, g, i);
      call.width[i] = call.coo[i].width;
      check_like_param(op, p, state_sums[i], "state_sums", i);
    } else {
      if (call.sparse[i]) {
        call.coo[i] = check_coo_grad(op, p, g, i);
        TORCH_CHECK_VALUE(call.coo[i].sparse_dim == 1, op, ": grads[", i, "] has sparse_dim ",
                          call.coo[i].sparse_dim,
                          "; row-wise Adagrad takes sparse gradients over the rows (dim 0) "
                          "only, as from nn.Embedding(sparse=True)");
      } else {
        check_like_param(op, p, g, "grads", i);
      }
      int64_t width = 1;
      for (int64_t d = 1; d < p.dim(); ++d) {
        const int64_t s = as_int(p.sym_size(d));
        width = (s < 0 || width < 0) ? -1 : width * s;
      }
      call.width[i] = width;
      const at::Tensor& s = state_sums[i];
      TORCH_CHECK_VALUE(s.defined(), op, ": state_sums[", i, "] is undefined");
      TORCH_CHECK(s.layout() == at::kStrided, op, ": state_sums[", i,
                  "] must be a dense tensor, got ", s.layout());
      TORCH_CHECK(s.device() == p.device(), op, ": state_sums[", i, "] is on ", s.device(),
                  " but params[", i, "] is on ", p.device(),
                  "; expected all tensors to be on the same device");
      const at::ScalarType want = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      TORCH_CHECK_TYPE(s.scalar_type() == want, op, ": state_sums[", i, "] has dtype ",
                       s.scalar_type(), " but a ", p.scalar_type(), " param keeps its sums in ",
                       want);
      TORCH_CHECK_VALUE(s.dim() == 1 && s.sym_size(0) == rowwise_rows(p), op, ": state_sums[",
                        i, "] has shape ", s.sym_sizes(), " but params[", i, "] of shape ",
                        p.sym_sizes(), " has ", rowwise_rows(p), " rows (one sum per row)");
    }
    check_step_tensor(op, state_steps[i], p, i);
    writes.add(p, "params", i);
    writes.add(state_sums[i], "state_sums", i);
    writes.add(state_steps[i], "state_steps", i);
  }
  return call;
}

// Note [Sparse Adagrad] (math/adagrad.h)'s kPlainUpdate: ATen's add_ rounds the product first
// where the sparse operand has one touched element and no dense dims and the param is
// contiguous. `num_rows`: the gradient's unique rows; `values`: its values. Shared by the CPU
// and CUDA ops, so they take the same path.
inline bool sparse_adagrad_plain_update(const at::Tensor& param, int64_t num_rows,
                                        const at::Tensor& values) {
  return num_rows == 1 && values.dim() == 1 && param.is_contiguous();
}

}  // namespace ops
}  // namespace pyoptim
