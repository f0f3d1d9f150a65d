// SparseAdam CUDA kernel: one warp per unique row, the row's gradient formed from its duplicates
// in the order of Note [Sparse rows on the GPU] (cuda/sparse_rows.cuh), then
// math::sparse_adam_step. The op glue (checks, grouping) is ops/sparse_adam_cuda.cu.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sparse_rows.cuh"
#include "pyoptim/macros.h"
#include "pyoptim/math/sparse_adam.h"

namespace pyoptim {
namespace cuda {

constexpr int kSparseAdamWarpsPerBlock = 4;

template <class S, bool kMaximize, bool kWeightDecay>
__global__ void __launch_bounds__(kSparseAdamWarpsPerBlock * 32)
    sparse_adam_kernel(S* __restrict__ param, S* __restrict__ exp_avg, S* __restrict__ exp_avg_sq,
                       const int64_t* __restrict__ rows, const DuplicateSums<S> d,
                       int64_t num_unique, const math::SparseAdamCoeffs<mta::opmath_t<S>> c) {
  using T = mta::opmath_t<S>;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * kSparseAdamWarpsPerBlock + threadIdx.x / 32;
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

// p, m, v: contiguous [rows, width]; values: the gradient's contiguous [nnz, width] values.
template <class S>
void launch_sparse_adam(const at::Tensor& p, const at::Tensor& m, const at::Tensor& v,
                        const at::Tensor& values, const DeviceRowGroups& g, int64_t width,
                        const math::SparseAdamCoeffs<mta::opmath_t<S>>& c, bool maximize,
                        bool decay) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;  // block sums of hot rows: alive until the update is queued
  const DuplicateSums<S> d = duplicate_sums<S>(values, g, width, partials);
  const int64_t blocks = (g.num_unique + kSparseAdamWarpsPerBlock - 1) / kSparseAdamWarpsPerBlock;
  PYOPTIM_BOOL_SWITCH(maximize, kMaximize, [&] {
    PYOPTIM_BOOL_SWITCH(decay, kWeightDecay, [&] {
      sparse_adam_kernel<S, kMaximize, kWeightDecay>
          <<<static_cast<unsigned>(blocks), kSparseAdamWarpsPerBlock * 32, 0, stream>>>(
              static_cast<S*>(p.data_ptr()), static_cast<S*>(m.data_ptr()),
              static_cast<S*>(v.data_ptr()), g.rows.data_ptr<int64_t>(), d, g.num_unique, c);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace cuda
}  // namespace pyoptim
