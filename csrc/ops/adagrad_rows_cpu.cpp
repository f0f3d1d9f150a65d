// pyoptim::sparse_adagrad_ and pyoptim::rowwise_adagrad_ on CPU: validate everything and group
// every sparse gradient's rows, then update each touched row of each param once, in parallel
// over rows, then count the steps.
//
// Sparse gradients are read as they come (uncoalesced COO): Note [Sparse rows: one
// deterministic pass] in ops/sparse_rows.h. The math: Note [Sparse Adagrad] in math/adagrad.h,
// Note [Row-wise Adagrad] in math/rowwise_adagrad.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "ops/adagrad_rows_args.h"
#include "ops/checks.h"
#include "ops/dtypes.h"
#include "ops/sparse_rows.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/adagrad.h"
#include "pyoptim/math/rowwise_adagrad.h"

namespace pyoptim {
namespace {

struct RowsItem {
  at::Tensor param, state_sum;  // work tensors (the user's, or row-major copies)
  at::Tensor values;            // contiguous [nnz, width], or the dense grad [rows, width]
  ops::RowGroups* groups = nullptr;  // this thread's buffers; null: a dense grad (or nothing)
  int64_t num_rows = 0;              // rows to update (0: nothing to do)
  cpu::AdagradRowsPtrs ptrs{};
  bool copied = false;
  bool plain_update = false;  // sparse_adagrad_: Note [Sparse Adagrad]'s kPlainUpdate
  // coefficients: sparse_adagrad_'s or rowwise_adagrad_'s, float or double math
  math::SparseAdagradCoeffs<float> sf;
  math::SparseAdagradCoeffs<double> sd;
  math::RowwiseAdagradCoeffs<float> rf;
  math::RowwiseAdagradCoeffs<double> rd;
};

// `sparse_dim` leading dims index a tensor's rows (row-wise: the first dim; a 0-dim tensor is a
// single row). False when its layout is not rows of contiguous elements.
bool rows_of(const at::Tensor& t, int64_t sparse_dim, int64_t* row_stride) {
  if (t.dim() == 0) {
    *row_stride = 1;
    return true;
  }
  return ops::row_layout(t, sparse_dim, row_stride);
}

template <bool kRowwise>
void adagrad_rows_cpu(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                      at::TensorList state_steps, at::IntArrayRef group_sizes,
                      at::ArrayRef<double> hyper, const c10::List<bool>& flags,
                      const c10::List<std::optional<at::Tensor>>& lr_tensors,
                      bool validate_only) {
  const char* op = kRowwise ? "pyoptim.rowwise_adagrad_" : "pyoptim.sparse_adagrad_";
  // ---- 1. validate and group everything; nothing is written in this part ------------------
  ops::WriteSet writes;
  const ops::AdagradRowsCall call =
      ops::check_adagrad_rows_call(op, kRowwise, c10::DeviceType::CPU, params, grads, state_sums,
                                   state_steps, group_sizes, hyper, flags, lr_tensors,
                                   /*read_values=*/true, writes);
  const size_t n = params.size();
  std::vector<RowsItem> items(n);
  std::vector<double> steps(n, 0.0);
  // per-thread buffers, refilled by every call (Note [Grouping buffers] in ops/sparse_rows.h)
  static thread_local std::vector<int64_t> linear_storage;
  static thread_local std::vector<ops::RowGroups> group_pool;
  if (group_pool.size() < n) group_pool.resize(n);
  for (size_t i = 0; i < n; ++i) {
    RowsItem& it = items[i];
    const ops::AdagradRowsGroup& grp = call.of(i);
    steps[i] = ops::next_step_count(op, state_steps[i], i);
    const double step = steps[i];  // the count after this step's increment
    ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
      using S = decltype(st);
      using T = ops::opmath_t<S>;
      const ops::CheckedNarrow<T, S> narrow;
      if constexpr (kRowwise) {
        const auto c = math::make_rowwise_adagrad_coeffs<T>(grp.lr, grp.lr_decay, grp.eps,
                                                            grp.weight_decay, step, narrow);
        if constexpr (std::is_same<T, double>::value) it.rd = c; else it.rf = c;
      } else {
        const auto c =
            math::make_sparse_adagrad_coeffs<T>(grp.lr, grp.lr_decay, grp.eps, step, narrow);
        if constexpr (std::is_same<T, double>::value) it.sd = c; else it.sf = c;
      }
    });
    if (!call.sparse[i]) {  // row-wise, dense grad: every row
      if (params[i].numel() == 0) continue;  // nothing to update (the step counts)
      it.num_rows = params[i].dim() == 0 ? 1 : params[i].size(0);
      if (!validate_only) it.values = writes.unaliased(grads[i]);
      continue;
    }
    const ops::CooGrad& coo = call.coo[i];
    if (coo.nnz == 0) continue;  // torch skips an empty grad (the step counts)
    const int64_t* rows = ops::linear_rows(op, coo, params[i].sizes(), i, linear_storage);
    // the index checks, no grouping (width 0: indices checked, nothing to update)
    if (validate_only || call.width[i] == 0) {
      ops::check_rows(rows, coo.nnz, coo.num_rows, op);
      continue;
    }
    it.groups = &group_pool[i];
    ops::group_rows(rows, coo.nnz, coo.num_rows, op, *it.groups);
    it.num_rows = it.groups->num_unique();
    it.values = writes.unaliased(coo.values);
    it.plain_update =
        !kRowwise && ops::sparse_adagrad_plain_update(params[i], it.num_rows, coo.values);
  }
  writes.check(op);
  if (validate_only) return;

  // ---- 2. plan: row layouts (or row-major copies) -------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    RowsItem& it = items[i];
    if (it.num_rows == 0) continue;
    const int64_t sparse_dim = call.sparse[i] ? call.coo[i].sparse_dim : 1;
    int64_t sp = 0, ss = 0;
    if (rows_of(params[i], sparse_dim, &sp) &&
        rows_of(state_sums[i], kRowwise ? 1 : sparse_dim, &ss)) {
      it.param = params[i];
      it.state_sum = state_sums[i];
    } else {  // rare layouts: work on row-major copies, copied back after the update
      it.param = params[i].contiguous();
      it.state_sum = state_sums[i].contiguous();
      it.copied = true;
      rows_of(it.param, sparse_dim, &sp);
      rows_of(it.state_sum, kRowwise ? 1 : sparse_dim, &ss);
    }
    const ops::RowGroups* g = it.groups;
    it.ptrs = cpu::AdagradRowsPtrs{it.param.data_ptr(),
                                   it.state_sum.data_ptr(),
                                   sp,
                                   ss,
                                   it.values.const_data_ptr(),
                                   call.width[i],
                                   g ? g->rows.data() : nullptr,
                                   g ? g->offsets.data() : nullptr,
                                   g ? g->order.data() : nullptr};
  }

  // ---- 3. update: each param's touched rows, in parallel over rows --------------------------
  const cpu::KernelTable& table = cpu::current_kernels();
  for (size_t i = 0; i < n; ++i) {
    const RowsItem& it = items[i];
    if (it.num_rows == 0) continue;
    const ops::AdagradRowsGroup& grp = call.of(i);
    const int64_t width = it.ptrs.width;
    auto rows_fn = [&](int64_t ub, int64_t ue) {
      ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
        using S = decltype(st);
        using T = ops::opmath_t<S>;
        std::vector<T> scratch(2 * width);  // see AdagradRowsPtrs
        if constexpr (kRowwise) {
          const cpu::RowwiseAdagradFlags f{
              grp.maximize, grp.weight_decay == 0.0 ? math::RowwiseDecay::kNone
                            : grp.decoupled        ? math::RowwiseDecay::kDecoupled
                                                   : math::RowwiseDecay::kL2};
          const auto& c = [&]() -> const math::RowwiseAdagradCoeffs<T>& {
            if constexpr (std::is_same<T, double>::value) return it.rd; else return it.rf;
          }();
          ops::cpu_kernel<S>(table.rowwise_adagrad)(it.ptrs, ub, ue, c, f, scratch.data());
        } else {
          const auto& c = [&]() -> const math::SparseAdagradCoeffs<T>& {
            if constexpr (std::is_same<T, double>::value) return it.sd; else return it.sf;
          }();
          ops::cpu_kernel<S>(table.sparse_adagrad)(it.ptrs, ub, ue, c, grp.maximize,
                                                   it.plain_update, scratch.data());
        }
      });
    };
    if (it.groups != nullptr) {
      ops::parallel_over_rows(*it.groups, width, rows_fn);
    } else {  // a dense grad: every row costs the same
      const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(width, 1));
      at::parallel_for(0, it.num_rows, grain, rows_fn);
    }
    // ---- 4. copy back what was updated in a copy ------------------------------------------
    if (it.copied) {
      params[i].copy_(it.param);
      state_sums[i].copy_(it.state_sum);
    }
  }
  for (size_t i = 0; i < n; ++i) ops::store_host_step(state_steps[i], steps[i]);
}

}  // namespace

// Sparse grads carry the SparseCPU key, which the dispatcher picks over CPU; CPU serves calls
// whose grads are all dense (rowwise_adagrad_; sparse_adagrad_ rejects them).
TORCH_LIBRARY_IMPL(pyoptim, CPU, m) {
  m.impl("sparse_adagrad_", &adagrad_rows_cpu<false>);
  m.impl("rowwise_adagrad_", &adagrad_rows_cpu<true>);
}
TORCH_LIBRARY_IMPL(pyoptim, SparseCPU, m) {
  m.impl("sparse_adagrad_", &adagrad_rows_cpu<false>);
  m.impl("rowwise_adagrad_", &adagrad_rows_cpu<true>);
}

}  // namespace pyoptim
