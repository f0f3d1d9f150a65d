// pyoptim::sparse_adagrad_ and pyoptim::rowwise_adagrad_ on CUDA: the CPU ops' validation and
// semantics (ops/adagrad_rows_cpu.cpp), the same math (math/adagrad.h, math/rowwise_adagrad.h),
// the same duplicate-summation order (Note [Sparse rows on the GPU] in cuda/sparse_rows.cuh) and
// row-sum order (Note [Row sum lanes]), so results equal the CPU's bitwise. Per param: group its
// rows (one sync for the index check), sum the blocks of hot rows, then one warp per row
// (cuda/adagrad_rows_kernels.cuh). Coefficients are computed on the host in double, as on the
// CPU; step counts and a Tensor lr are read on the host (these ops sync anyway).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "cuda/adagrad_rows_kernels.cuh"
#include "cuda/sparse_rows.cuh"
#include "ops/adagrad_rows_args.h"
#include "ops/checks.h"
#include "ops/dtypes.h"

namespace pyoptim {
namespace {

struct Item {
  at::Tensor values;  // sparse: [nnz, width] values; dense (row-wise): the grad
  cuda::DeviceRowGroups groups;
  int64_t num_rows = 0;  // rows to update (0: nothing to do)
  bool sparse = false;
  math::SparseAdagradCoeffs<float> sf;
  math::SparseAdagradCoeffs<double> sd;
  math::RowwiseAdagradCoeffs<float> rf;
  math::RowwiseAdagradCoeffs<double> rd;
};

template <bool kRowwise>
void adagrad_rows_cuda(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                       at::TensorList state_steps, at::IntArrayRef group_sizes,
                       at::ArrayRef<double> hyper, const c10::List<bool>& flags,
                       const c10::List<std::optional<at::Tensor>>& lr_tensors,
                       bool validate_only) {
  const char* op = kRowwise ? "pyoptim.rowwise_adagrad_" : "pyoptim.sparse_adagrad_";
  // ---- 1. validate and group everything; nothing is written in this part ------------------
  ops::WriteSet writes;
  const ops::AdagradRowsCall call =
      ops::check_adagrad_rows_call(op, kRowwise, c10::DeviceType::CUDA, params, grads,
                                   state_sums, state_steps, group_sizes, hyper, flags,
                                   lr_tensors, /*read_values=*/true, writes);
  const size_t n = params.size();
  std::vector<Item> items(n);
  std::vector<double> steps(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    Item& it = items[i];
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
    it.sparse = call.sparse[i];
    if (!it.sparse) {  // row-wise, dense grad: every row
      if (params[i].numel() == 0) continue;  // nothing to update (the step counts)
      it.num_rows = params[i].dim() == 0 ? 1 : params[i].size(0);
      if (!validate_only) it.values = writes.unaliased(grads[i]);
      continue;
    }
    const ops::CooGrad& coo = call.coo[i];
    if (coo.nnz == 0) continue;  // torch skips an empty grad (the step counts)
    const c10::cuda::CUDAGuard guard(params[i].device());
    const std::string what = c10::str("grads[", i, "]");
    // the index checks, no grouping (width 0: indices checked, nothing to update)
    if (validate_only || call.width[i] == 0) {
      cuda::check_indices_cuda(coo.indices, params[i].sizes(), op, what.c_str());
      continue;
    }
    it.groups = cuda::group_rows_cuda(coo.indices, params[i].sizes(), op, what.c_str(),
                                      /*block_sums=*/true);
    it.num_rows = it.groups.num_unique;
    it.values = writes.unaliased(coo.values);
  }
  writes.check(op);
  if (validate_only) return;

  // ---- 2./3. per param: one launch ----------------------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    Item& it = items[i];
    if (it.num_rows == 0) continue;
    const ops::AdagradRowsGroup& grp = call.of(i);
    const c10::cuda::CUDAGuard guard(params[i].device());
    const at::Tensor p = params[i].is_contiguous() ? params[i] : params[i].contiguous();
    const at::Tensor s =
        state_sums[i].is_contiguous() ? state_sums[i] : state_sums[i].contiguous();
    const int64_t width = call.width[i];
    ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
      using S = decltype(st);
      using T = ops::opmath_t<S>;
      if constexpr (kRowwise) {
        const math::RowwiseDecay decay = grp.weight_decay == 0.0 ? math::RowwiseDecay::kNone
                                         : grp.decoupled ? math::RowwiseDecay::kDecoupled
                                                         : math::RowwiseDecay::kL2;
        const auto& c = [&]() -> const math::RowwiseAdagradCoeffs<T>& {
          if constexpr (std::is_same<T, double>::value) return it.rd; else return it.rf;
        }();
        cuda::launch_rowwise_adagrad<S>(p, s, it.values, it.sparse ? &it.groups : nullptr,
                                        it.num_rows, width, c, grp.maximize, decay);
      } else {
        const auto& c = [&]() -> const math::SparseAdagradCoeffs<T>& {
          if constexpr (std::is_same<T, double>::value) return it.sd; else return it.sf;
        }();
        const bool plain = ops::sparse_adagrad_plain_update(params[i], it.num_rows, it.values);
        cuda::launch_sparse_adagrad<S>(p, s, it.values, it.groups, width, c, grp.maximize,
                                       plain);
      }
    });
    // ---- 4. copy back what was updated in a copy --------------------------------------------
    if (!p.is_same(params[i])) params[i].copy_(p);
    if (!s.is_same(state_sums[i])) state_sums[i].copy_(s);
  }
  for (size_t i = 0; i < n; ++i) {
    if (state_steps[i].device().is_cpu()) {
      ops::store_host_step(state_steps[i], steps[i]);
    } else {
      state_steps[i].fill_(steps[i]);
    }
  }
}

}  // namespace

// Sparse grads carry the SparseCUDA key, which the dispatcher picks over CUDA; CUDA serves calls
// whose grads are all dense (rowwise_adagrad_; sparse_adagrad_ rejects them).
TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) {
  m.impl("sparse_adagrad_", &adagrad_rows_cuda<false>);
  m.impl("rowwise_adagrad_", &adagrad_rows_cuda<true>);
}
TORCH_LIBRARY_IMPL(pyoptim, SparseCUDA, m) {
  m.impl("sparse_adagrad_", &adagrad_rows_cuda<false>);
  m.impl("rowwise_adagrad_", &adagrad_rows_cuda<true>);
}

}  // namespace pyoptim
