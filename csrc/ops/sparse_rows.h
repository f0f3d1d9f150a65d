// Row grouping for sparse (COO) gradients, shared by every sparse optimizer op on the CPU.
//
// Note [Sparse rows: one deterministic pass]
// A gradient from nn.Embedding(sparse=True) / nn.EmbeddingBag(sparse=True) arrives uncoalesced:
// `nnz` row indices (duplicates allowed, any order) and `nnz` value rows of `width` elements.
// group_rows() validates every index (IndexError before anything is written) and groups the
// positions by row with a stable LSD radix sort: unique rows come out ascending, and the
// duplicates of a row keep ascending position order. Kernels then sum each row's duplicates
// left to right in that order (cpu/sparse_rows_impl.h) and update each touched row once.
// Nothing depends on the thread count, so results are bitwise reproducible. (torch's CPU
// coalesce() sums duplicates in the order of an *unstable* sort of the indices: the same order
// for small inputs, a different one, 1-2 ULP apart, for large ones.)
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

// group_rows for keys of `key_bits` bits and nnz < 2^pos_bits with key_bits + pos_bits <= 64
// (every realistic case): one LSD radix sort of the words (key << pos_bits | position), with
// digits of at most 11 bits over the key bits only. Positions start in order and every pass is
// stable, so duplicates stay in position order; moving one word per element (not a key and a
// position) and computing every pass's histogram in one read makes it ~3x faster.
inline RowGroups group_rows_packed(const int64_t* idx, int64_t nnz, int key_bits, int pos_bits) {
  RowGroups g;
  const int passes = (key_bits + 10) / 11;
  const int digit = passes == 0 ? 0 : (key_bits + passes - 1) / passes;
  const uint64_t mask = (uint64_t(1) << digit) - 1;
  std::vector<uint64_t> a(nnz), b(nnz);
  for (int64_t k = 0; k < nnz; ++k) a[k] = (uint64_t(idx[k]) << pos_bits) | uint64_t(k);
  std::vector<int64_t> count(size_t(passes) << digit, 0);
  for (int64_t k = 0; k < nnz; ++k) {
    const uint64_t key = a[k] >> pos_bits;
    for (int p = 0; p < passes; ++p) ++count[(size_t(p) << digit) + ((key >> (p * digit)) & mask)];
  }
  for (int p = 0; p < passes; ++p) {
    int64_t* c = count.data() + (size_t(p) << digit);
    int64_t sum = 0;
    for (uint64_t d = 0; d <= mask; ++d) {
      const int64_t t = c[d];
      c[d] = sum;
      sum += t;
    }
    const int shift = pos_bits + p * digit;
    for (int64_t k = 0; k < nnz; ++k) b[c[(a[k] >> shift) & mask]++] = a[k];
    a.swap(b);
  }
  const uint64_t pmask = pos_bits == 64 ? ~uint64_t(0) : (uint64_t(1) << pos_bits) - 1;
  g.order.resize(nnz);
  g.rows.reserve(nnz);
  g.offsets.reserve(nnz + 1);
  int64_t prev = -1;
  for (int64_t k = 0; k < nnz; ++k) {
    const int64_t key = pos_bits == 64 ? 0 : int64_t(a[k] >> pos_bits);
    g.order[k] = int64_t(a[k] & pmask);
    if (key != prev) {
      g.rows.push_back(key);
      g.offsets.push_back(k);
      prev = key;
    }
  }
  g.offsets.push_back(nnz);
  return g;
}

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
  int pos_bits = 0;
  while ((int64_t(1) << pos_bits) < nnz) ++pos_bits;
  if (bits + pos_bits <= 64) return group_rows_packed(idx, nnz, bits, pos_bits);

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
