// pyoptim::sparse_adam_ on CPU: validate and group every gradient, then update each touched
// row of each param once, in parallel over rows.
//
// The gradient is read as it comes (uncoalesced COO: grad._indices(), grad._values()); no
// coalesce() or sparse_mask. See Note [Sparse rows: one deterministic pass] in
// ops/sparse_rows.h and math/sparse_adam.h for the update.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/dtypes.h"
#include "ops/sparse_adam_args.h"
#include "ops/sparse_rows.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/sparse_adam.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.sparse_adam_";

struct SparseAdamItem {
  at::Tensor param, exp_avg, exp_avg_sq;  // work tensors (the user's, or contiguous copies)
  at::Tensor values;                      // contiguous [nnz, width]
  ops::RowGroups* groups = nullptr;  // this thread's buffers (see sparse_adam_cpu); null: no rows
  cpu::SparseAdamPtrs ptrs;
  math::SparseAdamCoeffs<float> cf;
  math::SparseAdamCoeffs<double> cd;
  bool copied = false;
};

void sparse_adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::ArrayRef<double> steps,
                     at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                     const c10::List<bool>& flags,
                     const c10::List<std::optional<at::Tensor>>& lr_tensors,
                     bool validate_only) {
  // ---- 1. validate and group everything; nothing is written in this part ------------------
  ops::WriteSet writes;
  const ops::SparseAdamCall call = ops::check_sparse_adam_call(
      kOp, c10::DeviceType::CPU, params, grads, exp_avgs, exp_avg_sqs, steps, group_sizes, hyper,
      flags, lr_tensors, /*read_values=*/true, writes);
  const size_t n = params.size();
  std::vector<SparseAdamItem> items(n);
  ops::StepSizes step_sizes;
  // per-thread buffers, refilled by every call (Note [Grouping buffers] in ops/sparse_rows.h)
  static thread_local std::vector<int64_t> linear_storage;
  static thread_local std::vector<ops::RowGroups> group_pool;
  if (group_pool.size() < n) group_pool.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const ops::CooGrad& coo = call.coo[i];
    SparseAdamItem& it = items[i];
    ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
      using S = decltype(st);
      if constexpr (std::is_same<S, double>::value) {
        it.cd = ops::sparse_adam_coeffs<S>(call, i, steps[i] + 1.0, step_sizes);
      } else {
        it.cf = ops::sparse_adam_coeffs<S>(call, i, steps[i] + 1.0, step_sizes);
      }
    });
    if (coo.nnz == 0) continue;  // torch skips an empty grad (the step counts)
    const int64_t* rows = ops::linear_rows(kOp, coo, params[i].sizes(), i, linear_storage);
    // the index checks, no grouping (width 0: indices checked, nothing to update)
    if (validate_only || coo.width == 0) {
      ops::check_rows(rows, coo.nnz, coo.num_rows, kOp);
      continue;
    }
    it.groups = &group_pool[i];
    ops::group_rows(rows, coo.nnz, coo.num_rows, kOp, *it.groups);
    it.values = writes.unaliased(coo.values);
  }
  writes.check(kOp);
  if (validate_only) return;

  // ---- 2. plan: row layouts (or contiguous copies) --------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    SparseAdamItem& it = items[i];
    if (it.groups == nullptr || it.groups->num_unique() == 0) continue;
    const int64_t sparse_dim = call.coo[i].sparse_dim;
    int64_t sp = 0, sm = 0, sv = 0;
    if (ops::row_layout(params[i], sparse_dim, &sp) &&
        ops::row_layout(exp_avgs[i], sparse_dim, &sm) &&
        ops::row_layout(exp_avg_sqs[i], sparse_dim, &sv)) {
      it.param = params[i];
      it.exp_avg = exp_avgs[i];
      it.exp_avg_sq = exp_avg_sqs[i];
    } else {  // rare layouts: work on row-major copies, copied back after the update
      it.param = params[i].contiguous();
      it.exp_avg = exp_avgs[i].contiguous();
      it.exp_avg_sq = exp_avg_sqs[i].contiguous();
      it.copied = true;
      ops::row_layout(it.param, sparse_dim, &sp);
      ops::row_layout(it.exp_avg, sparse_dim, &sm);
      ops::row_layout(it.exp_avg_sq, sparse_dim, &sv);
    }
    it.ptrs = cpu::SparseAdamPtrs{it.param.data_ptr(),
                                  it.exp_avg.data_ptr(),
                                  it.exp_avg_sq.data_ptr(),
                                  sp,
                                  sm,
                                  sv,
                                  it.values.const_data_ptr(),
                                  call.coo[i].width,
                                  it.groups->rows.data(),
                                  it.groups->offsets.data(),
                                  it.groups->order.data()};
  }

  // ---- 3. update: each param's touched rows, in parallel over rows --------------------------
  const cpu::SparseAdamKernels& k = cpu::current_kernels().sparse_adam;
  for (size_t i = 0; i < n; ++i) {
    const SparseAdamItem& it = items[i];
    if (it.groups == nullptr || it.groups->num_unique() == 0) continue;
    const ops::SparseAdamGroup& grp = call.of(i);
    const cpu::SparseAdamFlags flags{grp.maximize, grp.weight_decay != 0.0};
    const int64_t width = it.ptrs.width;
    ops::parallel_over_rows(*it.groups, width, [&](int64_t ub, int64_t ue) {
      ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
        using S = decltype(st);
        std::vector<ops::opmath_t<S>> scratch(2 * width);  // see SparseAdamKernels
        if constexpr (std::is_same<S, double>::value) {
          ops::cpu_kernel<S>(k)(it.ptrs, ub, ue, it.cd, flags, scratch.data());
        } else {
          ops::cpu_kernel<S>(k)(it.ptrs, ub, ue, it.cf, flags, scratch.data());
        }
      });
    });
    if (it.copied) {
      params[i].copy_(it.param);
      exp_avgs[i].copy_(it.exp_avg);
      exp_avg_sqs[i].copy_(it.exp_avg_sq);
    }
  }
}

}  // namespace

// The grads are sparse, so the dispatcher picks the SparseCPU kernel; CPU serves calls whose
// tensors are all dense (empty lists), which the op rejects or treats as a no-op alike.
TORCH_LIBRARY_IMPL(pyoptim, CPU, m) { m.impl("sparse_adam_", &sparse_adam_cpu); }
TORCH_LIBRARY_IMPL(pyoptim, SparseCPU, m) { m.impl("sparse_adam_", &sparse_adam_cpu); }

}  // namespace pyoptim
