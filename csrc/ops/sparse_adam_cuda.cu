// pyoptim::sparse_adam_ on CUDA: the CPU op's validation and semantics (ops/sparse_adam_cpu.cpp),
// the same math (math/sparse_adam.h) and the same duplicate-summation order (Note [Sparse rows
// on the GPU] in cuda/sparse_rows.cuh), so float32 / float64 results equal the CPU's bitwise.
// Per param: group its rows (one sync for the index check), sum the blocks of hot rows, then
// one warp per unique row (cuda/sparse_adam_kernels.cuh). Coefficients are computed on the host
// in double, as on the CPU (a GPU Tensor lr is read on the host: this op syncs anyway).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "cuda/sparse_adam_kernels.cuh"
#include "cuda/sparse_rows.cuh"
#include "ops/checks.h"
#include "ops/dtypes.h"
#include "ops/sparse_adam_args.h"
#include "pyoptim/math/sparse_adam.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.sparse_adam_";

struct Item {
  at::Tensor values;
  cuda::DeviceRowGroups groups;
  math::SparseAdamCoeffs<float> cf;
  math::SparseAdamCoeffs<double> cd;
};

void sparse_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::ArrayRef<double> steps,
                      at::IntArrayRef group_sizes, at::ArrayRef<double> hyper,
                      const c10::List<bool>& flags,
                      const c10::List<std::optional<at::Tensor>>& lr_tensors,
                      bool validate_only) {
  // ---- 1. validate and group everything; nothing is written in this part ------------------
  ops::WriteSet writes;
  const ops::SparseAdamCall call = ops::check_sparse_adam_call(
      kOp, c10::DeviceType::CUDA, params, grads, exp_avgs, exp_avg_sqs, steps, group_sizes, hyper,
      flags, lr_tensors, /*read_values=*/true, writes);
  const size_t n = params.size();
  std::vector<Item> items(n);
  ops::StepSizes step_sizes;
  for (size_t i = 0; i < n; ++i) {
    const ops::CooGrad& coo = call.coo[i];
    Item& it = items[i];
    ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
      using S = decltype(st);
      if constexpr (std::is_same<S, double>::value) {
        it.cd = ops::sparse_adam_coeffs<S>(call, i, steps[i] + 1.0, step_sizes);
      } else {
        it.cf = ops::sparse_adam_coeffs<S>(call, i, steps[i] + 1.0, step_sizes);
      }
    });
    if (coo.nnz == 0) continue;  // torch skips an empty grad (the step counts)
    const c10::cuda::CUDAGuard guard(params[i].device());
    const std::string what = c10::str("grads[", i, "]");
    // the index checks, no grouping (width 0: indices checked, nothing to update)
    if (validate_only || coo.width == 0) {
      cuda::check_indices_cuda(coo.indices, params[i].sizes(), kOp, what.c_str());
      continue;
    }
    it.groups = cuda::group_rows_cuda(coo.indices, params[i].sizes(), kOp, what.c_str(),
                                      /*block_sums=*/true);
    it.values = writes.unaliased(coo.values);
  }
  writes.check(kOp);
  if (validate_only) return;

  // ---- 2./3. per param: one launch ----------------------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    Item& it = items[i];
    if (it.groups.num_unique == 0) continue;
    const ops::SparseAdamGroup& grp = call.of(i);
    const c10::cuda::CUDAGuard guard(params[i].device());
    const at::Tensor p = params[i].is_contiguous() ? params[i] : params[i].contiguous();
    const at::Tensor m = exp_avgs[i].is_contiguous() ? exp_avgs[i] : exp_avgs[i].contiguous();
    const at::Tensor v =
        exp_avg_sqs[i].is_contiguous() ? exp_avg_sqs[i] : exp_avg_sqs[i].contiguous();
    ops::dispatch_param_dtype(params[i].scalar_type(), [&](auto st) {
      using S = decltype(st);
      if constexpr (std::is_same<S, double>::value) {
        cuda::launch_sparse_adam<S>(p, m, v, it.values, it.groups, call.coo[i].width, it.cd,
                                    grp.maximize, grp.weight_decay != 0.0);
      } else {
        cuda::launch_sparse_adam<S>(p, m, v, it.values, it.groups, call.coo[i].width, it.cf,
                                    grp.maximize, grp.weight_decay != 0.0);
      }
    });
    // ---- 4. copy back what was updated in a copy --------------------------------------------
    if (!p.is_same(params[i])) params[i].copy_(p);
    if (!m.is_same(exp_avgs[i])) exp_avgs[i].copy_(m);
    if (!v.is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(v);
  }
}

}  // namespace

// Sparse grads carry the SparseCUDA key, which the dispatcher picks over CUDA; CUDA serves calls
// whose tensors are all dense, which the op rejects.
TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) { m.impl("sparse_adam_", &sparse_adam_cuda); }
TORCH_LIBRARY_IMPL(pyoptim, SparseCUDA, m) { m.impl("sparse_adam_", &sparse_adam_cuda); }

}  // namespace pyoptim
