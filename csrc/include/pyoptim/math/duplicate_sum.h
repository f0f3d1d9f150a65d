// THE order in which a sparse gradient's duplicate rows are summed, for every sparse op on every
// device (CPU: cpu/sparse_rows_impl.h; CUDA: cuda/sparse_rows.cuh; test reference:
// tests/reference_sparse_adam.py::ordered_row_sum).
//
// Note [Blocked duplicate sums]
// A touched row's duplicate value rows, in ascending position order (Note [Sparse rows: one
// deterministic pass] in ops/sparse_rows.h), are cut into consecutive blocks of
// kDuplicateBlock; each block is summed left to right, then the block sums are added left to
// right:
//     g = (v_0 + ... + v_{B-1}) + (v_B + ... + v_{2B-1}) + ... + (... + v_{n-1})
// A row with at most kDuplicateBlock duplicates (every row of a uniform lookup, and most rows
// of any real one) is summed plainly left to right. (torch's coalesce() sums left to right in
// the order its unstable sort leaves the duplicates: position order for some inputs only, on
// the CPU up to 16 entries and large gradients, measured on torch 2.14.)
// Why blocks: a strictly left-to-right sum is a chain as long as the row's duplicate count, and
// a Zipf-distributed lookup has rows with ~10^5 duplicates; on a GPU that chain ran 16x longer
// than the rest of the step. Blocks are summed in parallel (one warp each) and the chain left is
// n / kDuplicateBlock long. The order depends on the positions only, never on the thread count
// or the device, so CPU and GPU results agree bitwise. (The blocked sum's rounding error bound,
// ~(B + n/B) ulp, is smaller than the plain sum's ~n ulp.)
// kDuplicateBlock ~ sqrt of the largest duplicate count we meet (1.2e5 for 1M Zipf(1.1) lookups
// over 10M rows) balances the two chains.
#pragma once

#include <cstdint>

#include "pyoptim/macros.h"

namespace pyoptim {
namespace math {

constexpr int64_t kDuplicateBlock = 256;

// Number of block sums a row with `n` duplicates needs stored apart: 0 when the row is one block
// (its sum is formed directly), else ceil(n / kDuplicateBlock).
PYOPTIM_HOST_DEVICE PYOPTIM_INLINE int64_t duplicate_blocks(int64_t n) {
  return n > kDuplicateBlock ? (n + kDuplicateBlock - 1) / kDuplicateBlock : 0;
}

}  // namespace math
}  // namespace pyoptim
