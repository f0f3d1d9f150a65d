// Row grouping for sparse (COO) gradients, shared by every sparse optimizer op on the CPU.
//
// Note [Sparse rows: one deterministic pass]
// A gradient from nn.Embedding(sparse=True) / nn.EmbeddingBag(sparse=True) arrives uncoalesced:
// `nnz` row indices (duplicates allowed, any order) and `nnz` value rows of `width` elements.
// group_rows() validates every index (IndexError before anything is written) and groups the
// positions by row with a stable LSD radix sort: unique rows come out ascending, and the
// duplicates of a row keep ascending position order. Kernels then sum each row's duplicates
// left to right in that order (cpu/sparse_rows_impl.h), which is also the order torch's
// coalesce() sums them in, and update each touched row once. Nothing depends on the thread
// count, so results are bitwise reproducible.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pyoptim {
namespace ops {

struct RowGroups {
  std::vector<int64_t> rows;     // [U] unique row indices, ascending
  std::vector<int64_t> offsets;  // [U + 1] row u's duplicates are order[offsets[u] .. offsets[u+1])
  std::vector<int64_t> order;    // [nnz] positions into the values, grouped by row
  int64_t num_unique() const { return static_cast<int64_t>(rows.size()); }
};

// `idx`: nnz row indices. Throws IndexError (nothing written anywhere) if any index is outside
// [0, num_rows). `what` names the op in the message.
inline RowGroups group_rows(const int64_t* idx, int64_t nnz, int64_t num_rows, const char* what) {
  RowGroups g;
  g.offsets.push_back(0);
  if (nnz == 0) return g;
  // Validate (and find the key width) before any work.
  int64_t lo = idx[0], hi = idx[0];
  for (int64_t k = 1; k < nnz; ++k) {
    lo = std::min(lo, idx[k]);
    hi = std::max(hi, idx[k]);
  }
  TORCH_CHECK_INDEX(lo >= 0 && hi < num_rows, what, ": sparse gradient has row index ",
                    lo < 0 ? lo : hi, " out of range for a parameter with ", num_rows, " rows");
  int bits = 0;
  while (bits < 63 && (int64_t(1) << bits) <= hi) ++bits;

  // Stable LSD radix sort of positions by key, 11 bits per pass (2048 buckets fit in L1).
  constexpr int kDigit = 11;
  constexpr int64_t kBuckets = int64_t(1) << kDigit;
  std::vector<int64_t> pos(nnz), tmp(nnz), keys(idx, idx + nnz), ktmp(nnz);
  for (int64_t k = 0; k < nnz; ++k) pos[k] = k;
  std::vector<int64_t> count(kBuckets);
  for (int shift = 0; shift < bits; shift += kDigit) {
    std::fill(count.begin(), count.end(), 0);
    for (int64_t k = 0; k < nnz; ++k) ++count[(keys[k] >> shift) & (kBuckets - 1)];
    int64_t sum = 0;
    for (int64_t b = 0; b < kBuckets; ++b) {
      const int64_t c = count[b];
      count[b] = sum;
      sum += c;
    }
    for (int64_t k = 0; k < nnz; ++k) {
      const int64_t dst = count[(keys[k] >> shift) & (kBuckets - 1)]++;
      tmp[dst] = pos[k];
      ktmp[dst] = keys[k];
    }
    pos.swap(tmp);
    keys.swap(ktmp);
  }
  // Segments of equal keys.
  g.order = std::move(pos);
  for (int64_t k = 0; k < nnz; ++k) {
    if (k == 0 || keys[k] != keys[k - 1]) {
      if (k != 0) g.offsets.push_back(k);
      g.rows.push_back(keys[k]);
    }
  }
  g.offsets.push_back(nnz);
  return g;
}

// Parallel over unique rows, split by cost (each row costs its duplicates plus the update), so
// a few very hot rows (Zipf) do not leave one thread with most of the work.
// fn(u_begin, u_end) is called concurrently on disjoint row ranges.
template <class F>
void parallel_over_rows(const RowGroups& g, int64_t width, const F& fn) {
  const int64_t U = g.num_unique();
  if (U == 0) return;
  constexpr int64_t kUpdateCost = 4;  // reading + writing param and state ~ a few value rows
  const int64_t total = static_cast<int64_t>(g.order.size()) + kUpdateCost * U;
  // cost prefix of row u: offsets[u] + kUpdateCost * u (monotonic in u)
  auto first_row_at = [&](int64_t c) {
    int64_t a = 0, b = U;  // smallest u with cost_prefix(u) >= c
    while (a < b) {
      const int64_t m = (a + b) / 2;
      if (g.offsets[m] + kUpdateCost * m < c) a = m + 1; else b = m;
    }
    return a;
  };
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(width, 1));
  at::parallel_for(0, total, grain, [&](int64_t cb, int64_t ce) {
    const int64_t ub = first_row_at(cb), ue = first_row_at(ce);
    if (ub < ue) fn(ub, ue);
  });
}

}  // namespace ops
}  // namespace pyoptim
