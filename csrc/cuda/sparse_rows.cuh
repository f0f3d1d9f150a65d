// Row grouping and duplicate sums for sparse (COO) gradients on the GPU, shared by sgd_ and
// sparse_adam_.
//
// Note [Sparse rows on the GPU]
// The same contract as the CPU's group_rows (Note [Sparse rows: one deterministic pass] in
// ops/sparse_rows.h): every index is validated before anything is written (IndexError), the
// unique rows come out ascending, and each row's duplicate positions keep ascending position
// order. Built from torch ops: a stable sort of the linear row indices (order = the sort's
// permutation) and unique_consecutive for the counts. Validation reads the per-dimension
// min/max back to the host (one sync), as does unique_consecutive's output size.
// Duplicates are summed in the order of Note [Blocked duplicate sums] (math/duplicate_sum.h),
// the CPU's order, so results agree with the CPU bitwise:
//   * a row with at most kDuplicateBlock duplicates is summed by the warp that updates it;
//   * a hotter row's blocks are summed first, one warp per block, into `partials`
//     (block_sums_kernel), and the updating warp adds its row's block sums left to right.
// So no warp walks a chain longer than max(kDuplicateBlock, duplicates / kDuplicateBlock).
// Each lane keeps kCols columns (32 * kCols per warp pass) and loads two rows ahead of its
// additions: independent loads in flight hide the latency of the gathered value rows.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "pyoptim/math/duplicate_sum.h"

namespace pyoptim {
namespace cuda {

struct DeviceRowGroups {
  at::Tensor rows;     // [U] int64, ascending
  at::Tensor offsets;  // [U + 1] int64: row u's duplicates are order[offsets[u] .. offsets[u+1])
  at::Tensor order;    // [nnz] int64 positions into the values, grouped by row
  // [U + 1] int64: row u's block sums are partials[block_offsets[u] .. block_offsets[u+1]),
  // none for a row of one block; undefined when no row can have two (nnz <= kDuplicateBlock)
  // or the caller sums nothing
  at::Tensor block_offsets;
  int64_t max_blocks = 0;  // >= block_offsets[U]: sizes `partials` without a sync
  int64_t num_unique = 0;
};

constexpr int kCols = 4;  // columns per lane per pass over a row
constexpr int kSumWarpsPerBlock = 4;

// A template (like every kernel of this header) so each .cu file that includes it may
// instantiate it without breaking the one-definition rule.
template <class Index>
__global__ void count_blocks_kernel(const Index* __restrict__ offsets, Index num_unique,
                                    Index* __restrict__ blocks) {
  const Index u = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (u < num_unique) blocks[u] = math::duplicate_blocks(offsets[u + 1] - offsets[u]);
}

// `indices`: the COO indices [sparse_dim, nnz >= 1] (on the GPU), `sizes` the param's shape.
// Throws IndexError (nothing written) if any index is outside its dimension; returns the
// indices as int64. One sync: every dimension's min and max are read on the host.
inline at::Tensor check_indices_cuda(const at::Tensor& indices, at::IntArrayRef sizes,
                                     const char* op, const char* what) {
  const int64_t sd = indices.size(0);
  at::Tensor idx = indices.to(at::kLong);
  const at::Tensor mm = at::stack({std::get<0>(idx.min(1)), std::get<0>(idx.max(1))}).cpu();
  const auto acc = mm.accessor<int64_t, 2>();
  for (int64_t d = 0; d < sd; ++d) {
    const int64_t lo = acc[0][d], hi = acc[1][d];
    TORCH_CHECK_INDEX(lo >= 0 && hi < sizes[d], op, ": ", what, " has index ",
                      lo < 0 ? lo : hi, " in sparse dimension ", d,
                      ", out of range for a param of shape ", sizes);
  }
  return idx;
}

// check_indices_cuda (the same IndexError), then the grouping. `block_sums`: the caller sums
// duplicates (duplicate_sums), so plan the blocks of hot rows too.
inline DeviceRowGroups group_rows_cuda(const at::Tensor& indices, at::IntArrayRef sizes,
                                       const char* op, const char* what, bool block_sums) {
  DeviceRowGroups g;
  const int64_t sd = indices.size(0), nnz = indices.size(1);
  if (nnz == 0) return g;
  const at::Tensor idx = check_indices_cuda(indices, sizes, op, what);
  // row-major row index over the sparse dims (no sparse dim: one row, the whole param)
  at::Tensor lin = sd == 0 ? at::zeros({nnz}, idx.options()) : idx[0];
  for (int64_t d = 1; d < sd; ++d) lin = lin * sizes[d] + idx[d];
  at::Tensor sorted, order;
  std::tie(sorted, order) = at::sort(lin.contiguous(), /*stable=*/true, /*dim=*/0,
                                     /*descending=*/false);
  at::Tensor uniq, inverse, counts;
  std::tie(uniq, inverse, counts) =
      at::unique_consecutive(sorted, /*return_inverse=*/false, /*return_counts=*/true);
  g.num_unique = uniq.size(0);
  g.rows = uniq.contiguous();
  g.offsets = at::zeros({g.num_unique + 1}, idx.options());
  g.offsets.slice(0, 1).copy_(counts.cumsum(0));
  g.order = order.contiguous();
  if (block_sums && nnz > math::kDuplicateBlock) {
    // a row of n > B duplicates has ceil(n / B) < 2n / B blocks, so all rows < 2 nnz / B
    g.max_blocks = 2 * nnz / math::kDuplicateBlock + 1;
    at::Tensor blocks = at::empty({g.num_unique}, idx.options());
    const int threads = 256;
    const unsigned grid = static_cast<unsigned>((g.num_unique + threads - 1) / threads);
    count_blocks_kernel<int64_t><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.offsets.data_ptr<int64_t>(), g.num_unique, blocks.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    g.block_offsets = at::zeros({g.num_unique + 1}, idx.options());
    g.block_offsets.slice(0, 1).copy_(blocks.cumsum(0));
  }
  return g;
}

// What an update kernel needs to form row u's gradient (see row_gradient).
template <class S>
struct DuplicateSums {
  const S* values;                 // [nnz, width] value rows
  const int64_t* offsets;          // DeviceRowGroups::offsets
  const int64_t* order;            // DeviceRowGroups::order
  const int64_t* block_offsets;    // DeviceRowGroups::block_offsets, or nullptr
  const mta::opmath_t<S>* partials;  // [max_blocks, width] block sums
  int64_t width;
};

// acc[t] = row(k0)[j0 + 32 t] + row(k0 + 1)[...] + ... + row(k1 - 1)[...], added left to right
// in T, for the lane's columns j0 + 32 t < width (other columns: unspecified). `row(k)` gives
// the k-th row's start; two rows are loaded before they are added.
template <class T, class E, class RowOf>
__device__ __forceinline__ void sum_rows_in_order(int64_t k0, int64_t k1, const RowOf& row,
                                                  int64_t width, int64_t j0, T (&acc)[kCols]) {
  const E* r0 = row(k0);
#pragma unroll
  for (int t = 0; t < kCols; ++t) {
    const int64_t j = j0 + 32 * t;
    acc[t] = j < width ? mta::load_op<E>(r0[j]) : T(0);
  }
  int64_t k = k0 + 1;
  for (; k + 2 <= k1; k += 2) {
    const E* ra = row(k);
    const E* rb = row(k + 1);
    T a[kCols], b[kCols];
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + 32 * t;
      a[t] = j < width ? mta::load_op<E>(ra[j]) : T(0);
      b[t] = j < width ? mta::load_op<E>(rb[j]) : T(0);
    }
#pragma unroll
    for (int t = 0; t < kCols; ++t) acc[t] = (acc[t] + a[t]) + b[t];
  }
  if (k < k1) {
    const E* ra = row(k);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + 32 * t;
      acc[t] = acc[t] + (j < width ? mta::load_op<E>(ra[j]) : T(0));
    }
  }
}

// g[t]: column j0 + 32 t of unique row u's gradient, its duplicates summed in the order of
// Note [Blocked duplicate sums].
template <class S>
__device__ __forceinline__ void row_gradient(const DuplicateSums<S>& d, int64_t u, int64_t j0,
                                             mta::opmath_t<S> (&g)[kCols]) {
  using T = mta::opmath_t<S>;
  const int64_t b0 = d.block_offsets != nullptr ? d.block_offsets[u] : 0;
  const int64_t b1 = d.block_offsets != nullptr ? d.block_offsets[u + 1] : 0;
  if (b0 == b1) {  // one block: the row's duplicates directly
    const S* values = d.values;
    const int64_t* order = d.order;
    const int64_t width = d.width;
    sum_rows_in_order<T, S>(d.offsets[u], d.offsets[u + 1],
                            [=](int64_t k) { return values + order[k] * width; }, width, j0, g);
  } else {  // the block sums, left to right
    const T* partials = d.partials;
    const int64_t width = d.width;
    sum_rows_in_order<T, T>(b0, b1, [=](int64_t b) { return partials + b * width; }, width, j0,
                            g);
  }
}

// One warp per block w < block_offsets[U]: partials[w] = the sum of its <= kDuplicateBlock
// duplicates, left to right.
template <class S>
__global__ void __launch_bounds__(kSumWarpsPerBlock * 32)
    block_sums_kernel(const S* __restrict__ values, const int64_t* __restrict__ offsets,
                      const int64_t* __restrict__ order,
                      const int64_t* __restrict__ block_offsets, int64_t num_unique,
                      int64_t width, mta::opmath_t<S>* __restrict__ partials) {
  using T = mta::opmath_t<S>;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kSumWarpsPerBlock + threadIdx.x / 32;
  if (w >= block_offsets[num_unique]) return;
  // the row whose blocks hold w: block_offsets[lo] <= w < block_offsets[lo + 1]
  int64_t lo = 0, hi = num_unique;  // block_offsets[lo] <= w < block_offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (block_offsets[mid] <= w) lo = mid; else hi = mid;
  }
  const int64_t k0 = offsets[lo] + (w - block_offsets[lo]) * math::kDuplicateBlock;
  const int64_t k1 = k0 + math::kDuplicateBlock < offsets[lo + 1]
                         ? k0 + math::kDuplicateBlock
                         : offsets[lo + 1];
  const int lane = threadIdx.x % 32;
  T* out = partials + w * width;
  for (int64_t jb = 0; jb < width; jb += 32 * kCols) {
    T s[kCols];
    sum_rows_in_order<T, S>(k0, k1, [=](int64_t k) { return values + order[k] * width; }, width,
                            jb + lane, s);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = jb + lane + 32 * t;
      if (j < width) out[j] = s[t];
    }
  }
}

// Sums the blocks of every row with more than kDuplicateBlock duplicates (on the current
// stream; not when !sum_blocks, for a kernel that reads only the value rows) and returns what
// the update kernels need; `partials` receives the block sums and
// must outlive the update launch (a tensor kept until then: the caching allocator only reuses
// it for work queued after).
template <class S>
DuplicateSums<S> duplicate_sums(const at::Tensor& values, const DeviceRowGroups& g,
                                int64_t width, at::Tensor& partials, bool sum_blocks = true) {
  using T = mta::opmath_t<S>;
  DuplicateSums<S> d{nullptr, nullptr, nullptr, nullptr, nullptr, width};
  if (g.num_unique == 0) return d;  // no rows: nothing to read
  d.values = static_cast<const S*>(values.data_ptr());
  d.offsets = g.offsets.data_ptr<int64_t>();
  d.order = g.order.data_ptr<int64_t>();
  if (!sum_blocks || !g.block_offsets.defined() || width == 0) return d;
  partials = at::empty({g.max_blocks, width},
                       values.options().dtype(c10::CppTypeToScalarType<T>::value));
  d.block_offsets = g.block_offsets.data_ptr<int64_t>();
  d.partials = partials.data_ptr<T>();
  block_sums_kernel<S>
      <<<static_cast<unsigned>((g.max_blocks + kSumWarpsPerBlock - 1) / kSumWarpsPerBlock),
         kSumWarpsPerBlock * 32, 0, at::cuda::getCurrentCUDAStream()>>>(
          d.values, d.offsets, d.order, d.block_offsets, g.num_unique, width,
          partials.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return d;
}

}  // namespace cuda
}  // namespace pyoptim
