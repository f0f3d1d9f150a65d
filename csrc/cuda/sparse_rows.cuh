// Row grouping for sparse (COO) gradients on the GPU, shared by sgd_sparse_ and sparse_adam_.
//
// Note [Sparse rows on the GPU]
// The same contract as the CPU's group_rows (Note [Sparse rows: one deterministic pass] in
// ops/sparse_rows.h): every index is validated before anything is written (IndexError), the
// unique rows come out ascending, and each row's duplicate positions keep ascending position
// order, so the kernels sum a row's duplicates left to right in the same order as the CPU and
// the results agree bitwise. Built from torch ops: a stable sort of the linear row indices
// (order = the sort's permutation) and unique_consecutive for the counts. Validation reads the
// per-dimension min/max back to the host (one sync), as does unique_consecutive's output size.
// One warp then updates one unique row (SIMT over the row's width).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace pyoptim {
namespace cuda {

struct DeviceRowGroups {
  at::Tensor rows;     // [U] int64, ascending
  at::Tensor offsets;  // [U + 1] int64: row u's duplicates are order[offsets[u] .. offsets[u+1])
  at::Tensor order;    // [nnz] int64 positions into the values, grouped by row
  int64_t num_unique = 0;
};

// `indices`: the COO indices [sparse_dim, nnz] (on the GPU), `sizes` the param's shape. Throws
// IndexError (nothing written) if any index is outside its dimension.
inline DeviceRowGroups group_rows_cuda(const at::Tensor& indices, at::IntArrayRef sizes,
                                       const char* op, const char* what) {
  DeviceRowGroups g;
  const int64_t sd = indices.size(0), nnz = indices.size(1);
  if (nnz == 0) return g;
  const at::Tensor idx = indices.to(at::kLong);
  // one sync: every dimension's min and max
  const at::Tensor mm = at::stack({std::get<0>(idx.min(1)), std::get<0>(idx.max(1))}).cpu();
  const auto acc = mm.accessor<int64_t, 2>();
  for (int64_t d = 0; d < sd; ++d) {
    const int64_t lo = acc[0][d], hi = acc[1][d];
    TORCH_CHECK_INDEX(lo >= 0 && hi < sizes[d], op, ": ", what, " has index ",
                      lo < 0 ? lo : hi, " in sparse dimension ", d,
                      ", out of range for a param of shape ", sizes);
  }
  at::Tensor lin = idx[0];
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
  return g;
}

}  // namespace cuda
}  // namespace pyoptim
