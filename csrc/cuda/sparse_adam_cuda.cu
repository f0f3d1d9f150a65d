// pyoptim::sparse_adam_ on CUDA: the CPU op's validation and semantics (ops/sparse_adam_cpu.cpp),
// the same math (math/sparse_adam.h) and the same duplicate-summation order (Note [Sparse rows
// on the GPU] in cuda/sparse_rows.cuh), so float32 / float64 results equal the CPU's bitwise.
// Per param: group its rows (one sync for the index check), sum the blocks of hot rows, then
// one warp per unique row.
// Coefficients are computed on the host in double, as on the CPU (a GPU lr_tensor is read on
// the host: this op syncs anyway).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sparse_rows.cuh"
#include "ops/checks.h"
#include "ops/sparse_adam_args.h"
#include "ops/sparse_rows.h"
#include "pyoptim/math/sparse_adam.h"

namespace pyoptim {
namespace cuda {
namespace {

constexpr const char* kOp = "pyoptim.sparse_adam_";
constexpr int kWarpsPerBlock = 4;

template <class S, bool kMaximize, bool kWeightDecay>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    sparse_adam_kernel(S* __restrict__ param, S* __restrict__ exp_avg, S* __restrict__ exp_avg_sq,
                       const int64_t* __restrict__ rows, const DuplicateSums<S> d,
                       int64_t num_unique, const math::SparseAdamCoeffs<mta::opmath_t<S>> c) {
  using T = mta::opmath_t<S>;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (u >= num_unique) return;
  const int lane = threadIdx.x % 32;
  const int64_t width = d.width;
  const int64_t base = rows[u] * width;
  for (int64_t jb = 0; jb < width; jb += 32 * kCols) {
    T g[kCols];
    row_gradient(d, u, jb + lane, g);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = jb + lane + 32 * t;
      if (j >= width) continue;
      T p = mta::load_op<S>(param[base + j]);
      T m = mta::load_op<S>(exp_avg[base + j]);
      T v = mta::load_op<S>(exp_avg_sq[base + j]);
      math::sparse_adam_step<kMaximize, kWeightDecay>(p, g[t], m, v, c);
      param[base + j] = mta::store_op<S>(p);
      exp_avg[base + j] = mta::store_op<S>(m);
      exp_avg_sq[base + j] = mta::store_op<S>(v);
    }
  }
}

template <class S>
void launch(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v, const at::Tensor& values,
            const DeviceRowGroups& g, int64_t width,
            const math::SparseAdamCoeffs<mta::opmath_t<S>>& c, bool maximize, bool decay) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;  // block sums of hot rows: alive until the update is queued
  const DuplicateSums<S> d = duplicate_sums<S>(values, g, width, partials);
  const int64_t blocks = (g.num_unique + kWarpsPerBlock - 1) / kWarpsPerBlock;
  PYOPTIM_BOOL_SWITCH(maximize, kMaximize, [&] {
    PYOPTIM_BOOL_SWITCH(decay, kWeightDecay, [&] {
      sparse_adam_kernel<S, kMaximize, kWeightDecay>
          <<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
              static_cast<S*>(p.data_ptr()), static_cast<S*>(m.data_ptr()),
              static_cast<S*>(v.data_ptr()), g.rows.data_ptr<int64_t>(), d, g.num_unique, c);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

struct Item {
  at::Tensor values;
  DeviceRowGroups groups;
  int64_t width = 0;
};

void sparse_adam_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::IntArrayRef steps, double lr, double beta1,
                      double beta2, double eps, double weight_decay, bool maximize,
                      const std::optional<at::Tensor>& lr_tensor) {
  // ---- 1. validate and group everything; nothing is written in this part ------------------
  const std::optional<at::Tensor> lr_host = ops::read_sparse_adam_lr(kOp, lr_tensor, lr);
  const size_t n = params.size();
  ops::check_sparse_adam_args(kOp, lr, beta1, beta2, eps, weight_decay, n, grads, exp_avgs,
                              exp_avg_sqs, steps);
  ops::WriteSet writes;
  std::vector<Item> items(n);
  for (size_t i = 0; i < n; ++i) {
    const ops::CooGrad coo = ops::check_sparse_adam_tensor(
        kOp, i, c10::DeviceType::CUDA, params, grads, exp_avgs, exp_avg_sqs, steps, writes);
    const at::Tensor& p = params[i];
    const int64_t nnz = coo.nnz, width = coo.width;
    const at::Tensor& indices = coo.indices;
    const at::Tensor& values = coo.values;
    Item& it = items[i];
    it.width = width;
    if (nnz == 0 || width == 0) continue;  // torch skips an empty grad (the step still counts)
    const c10::cuda::CUDAGuard guard(p.device());
    if (ops::check_only()) {  // Note [Check-only calls]: the index checks, no grouping
      check_indices_cuda(indices, p.sizes(), kOp, c10::str("grads[", i, "]").c_str());
      continue;
    }
    it.groups = group_rows_cuda(indices, p.sizes(), kOp, c10::str("grads[", i, "]").c_str(),
                                /*block_sums=*/true);
    it.values = values.contiguous();
  }
  writes.check(kOp);
  if (ops::check_only()) return;  // Note [Check-only calls]

  // ---- 2./3. per param: coefficients on the host, then one launch ---------------------------
  const bool decay = weight_decay != 0.0;
  for (size_t i = 0; i < n; ++i) {
    Item& it = items[i];
    if (it.groups.num_unique == 0) continue;
    const c10::cuda::CUDAGuard guard(params[i].device());
    const double step_size = ops::sparse_adam_step_size(lr, lr_host, beta1, beta2, steps[i]);
    const at::Tensor p = params[i].is_contiguous() ? params[i] : params[i].contiguous();
    const at::Tensor m = exp_avgs[i].is_contiguous() ? exp_avgs[i] : exp_avgs[i].contiguous();
    const at::Tensor v =
        exp_avg_sqs[i].is_contiguous() ? exp_avg_sqs[i] : exp_avg_sqs[i].contiguous();
    mta::dispatch_param_dtype(params[i].scalar_type(), [&](auto zero) {
      using S = decltype(zero);
      launch<S>(p, m, v, it.values, it.groups, it.width,
                math::make_sparse_adam_coeffs<mta::opmath_t<S>>(lr, beta1, beta2, eps,
                                                                weight_decay, step_size),
                maximize, decay);
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

}  // namespace cuda
}  // namespace pyoptim
