// CUDA kernels of sparse_adagrad_ (Adagrad's sparse branch) and rowwise_adagrad_: one warp per
// touched row, the row's gradient formed from its duplicates in the order of Note [Sparse rows
// on the GPU] (cuda/sparse_rows.cuh) or read from a dense grad, then the math of
// math/adagrad.h (Note [Sparse Adagrad]) and math/rowwise_adagrad.h (Note [Row-wise Adagrad]).
// The op glue (checks, grouping) is ops/adagrad_rows_cuda.cu.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sparse_rows.cuh"
#include "pyoptim/macros.h"
#include "pyoptim/math/adagrad.h"
#include "pyoptim/math/rowwise_adagrad.h"

namespace pyoptim {
namespace cuda {

constexpr int kAdagradRowsWarpsPerBlock = 4;

// Columns jb + lane + 32 t (t < kCols) of the gradient of unique row u: its duplicates summed
// (sparse, d) or the dense grad's row u (dense).
template <class S, bool kSparse>
__device__ __forceinline__ void adagrad_row_gradient(const DuplicateSums<S>& d,
                                                     const S* __restrict__ dense, int64_t u,
                                                     int64_t j0, mta::opmath_t<S> (&g)[kCols]) {
  if (kSparse) {
    row_gradient(d, u, j0, g);
  } else {
    const int64_t width = d.width;
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + 32 * t;
      g[t] = j < width ? mta::load_op<S>(dense[u * width + j]) : mta::opmath_t<S>(0);
    }
  }
}

template <class S, bool kMaximize, bool kPlain>
__global__ void __launch_bounds__(kAdagradRowsWarpsPerBlock * 32)
    sparse_adagrad_kernel(S* __restrict__ param, S* __restrict__ state_sum,
                          const int64_t* __restrict__ rows, const DuplicateSums<S> d,
                          int64_t num_unique, const math::SparseAdagradCoeffs<mta::opmath_t<S>> c) {
  using T = mta::opmath_t<S>;
  const int64_t u =
      static_cast<int64_t>(blockIdx.x) * kAdagradRowsWarpsPerBlock + threadIdx.x / 32;
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
      T s = mta::load_op<S>(state_sum[base + j]);
      math::sparse_adagrad_step<kMaximize, kPlain>(p, g[t], s, c);
      param[base + j] = mta::store_op<S>(p);
      state_sum[base + j] = mta::store_op<S>(s);
    }
  }
}

// One warp per row: thread `lane` owns lane `lane` of Note [Row sum lanes] (its columns are
// j = lane (mod 32), visited in increasing order), the lanes are folded by a shuffle tree
// (v[l] + v[l + h] for h = 16 .. 1, the CPU's fold), then every column is updated. A row wider
// than 32 * kCols forms its gradient twice (once for the sum, once for the update).
template <class S, bool kSparse, bool kMaximize, math::RowwiseDecay kDecay>
__global__ void __launch_bounds__(kAdagradRowsWarpsPerBlock * 32)
    rowwise_adagrad_kernel(S* __restrict__ param, mta::opmath_t<S>* __restrict__ state_sum,
                           const int64_t* __restrict__ rows, const DuplicateSums<S> d,
                           const S* __restrict__ dense, int64_t num_rows,
                           const math::RowwiseAdagradCoeffs<mta::opmath_t<S>> c) {
  using T = mta::opmath_t<S>;
  const int64_t u =
      static_cast<int64_t>(blockIdx.x) * kAdagradRowsWarpsPerBlock + threadIdx.x / 32;
  if (u >= num_rows) return;  // the whole warp
  const int lane = threadIdx.x % 32;
  const int64_t width = d.width;
  const int64_t r = kSparse ? rows[u] : u;
  S* const p_row = param + r * width;
  T sum = state_sum[r];  // read by every lane before lane 0 writes it
  T acc = T(0);
  for (int64_t jb = 0; jb < width; jb += 32 * kCols) {
    T g[kCols];
    adagrad_row_gradient<S, kSparse>(d, dense, u, jb + lane, g);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = jb + lane + 32 * t;
      if (j >= width) continue;
      const T p = kDecay == math::RowwiseDecay::kL2 ? mta::load_op<S>(p_row[j]) : T(0);
      acc = acc + math::rowwise_adagrad_square<kMaximize, kDecay>(g[t], p, c);
    }
  }
#pragma unroll
  for (int h = math::kRowSumLanes / 2; h >= 1; h /= 2) {
    acc = acc + __shfl_down_sync(0xffffffffu, acc, h);  // lane[l] + lane[l + h], for l < h
  }
  const T square_sum = __shfl_sync(0xffffffffu, acc, 0);
  const math::RowwiseScale<T> s =
      math::rowwise_adagrad_row<kDecay>(sum, square_sum, static_cast<T>(width), c);
  if (lane == 0) state_sum[r] = sum;
  for (int64_t jb = 0; jb < width; jb += 32 * kCols) {
    T g[kCols];
    adagrad_row_gradient<S, kSparse>(d, dense, u, jb + lane, g);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = jb + lane + 32 * t;
      if (j >= width) continue;
      T p = mta::load_op<S>(p_row[j]);
      math::rowwise_adagrad_update<kMaximize>(p, g[t], s);
      p_row[j] = mta::store_op<S>(p);
    }
  }
}

inline unsigned adagrad_rows_grid(int64_t rows) {
  return static_cast<unsigned>((rows + kAdagradRowsWarpsPerBlock - 1) / kAdagradRowsWarpsPerBlock);
}

// p, s: contiguous, shaped like the param; values: the gradient's contiguous [nnz, width] values.
template <class S>
void launch_sparse_adagrad(const at::Tensor& p, const at::Tensor& s, const at::Tensor& values,
                           const DeviceRowGroups& g, int64_t width,
                           const math::SparseAdagradCoeffs<mta::opmath_t<S>>& c, bool maximize,
                           bool plain_update) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;  // block sums of hot rows: alive until the update is queued
  const DuplicateSums<S> d = duplicate_sums<S>(values, g, width, partials);
  PYOPTIM_BOOL_SWITCH(maximize, kMaximize, [&] {
    PYOPTIM_BOOL_SWITCH(plain_update, kPlain, [&] {
      sparse_adagrad_kernel<S, kMaximize, kPlain>
          <<<adagrad_rows_grid(g.num_unique), kAdagradRowsWarpsPerBlock * 32, 0, stream>>>(
              static_cast<S*>(p.data_ptr()), static_cast<S*>(s.data_ptr()),
              g.rows.data_ptr<int64_t>(), d, g.num_unique, c);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// p: contiguous [rows, width]; sum: contiguous [rows] of the math type. Sparse (g != nullptr):
// `values` are the gradient's contiguous [nnz, width] values; dense: the contiguous grad.
template <class S>
void launch_rowwise_adagrad(const at::Tensor& p, const at::Tensor& sum, const at::Tensor& values,
                            const DeviceRowGroups* g, int64_t num_rows, int64_t width,
                            const math::RowwiseAdagradCoeffs<mta::opmath_t<S>>& c, bool maximize,
                            math::RowwiseDecay decay) {
  using T = mta::opmath_t<S>;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;
  DuplicateSums<S> d{nullptr, nullptr, nullptr, nullptr, nullptr, width};
  if (g != nullptr) d = duplicate_sums<S>(values, *g, width, partials);
  const int64_t* rows = g != nullptr ? g->rows.data_ptr<int64_t>() : nullptr;
  const S* dense = g != nullptr ? nullptr : static_cast<const S*>(values.data_ptr());
  auto launch = [&](auto sparse, auto maxi, auto dec) {
    rowwise_adagrad_kernel<S, decltype(sparse)::value, decltype(maxi)::value, decltype(dec)::value>
        <<<adagrad_rows_grid(num_rows), kAdagradRowsWarpsPerBlock * 32, 0, stream>>>(
            static_cast<S*>(p.data_ptr()), static_cast<T*>(sum.data_ptr()), rows, d, dense,
            num_rows, c);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  using math::RowwiseDecay;
  PYOPTIM_BOOL_SWITCH(g != nullptr, kSparse, [&] {
    PYOPTIM_BOOL_SWITCH(maximize, kMaximize, [&] {
      using Sp = std::integral_constant<bool, kSparse>;
      using Mx = std::integral_constant<bool, kMaximize>;
      if (decay == RowwiseDecay::kL2) {
        launch(Sp(), Mx(), std::integral_constant<RowwiseDecay, RowwiseDecay::kL2>());
      } else if (decay == RowwiseDecay::kDecoupled) {
        launch(Sp(), Mx(), std::integral_constant<RowwiseDecay, RowwiseDecay::kDecoupled>());
      } else {
        launch(Sp(), Mx(), std::integral_constant<RowwiseDecay, RowwiseDecay::kNone>());
      }
    });
  });
}

}  // namespace cuda
}  // namespace pyoptim
