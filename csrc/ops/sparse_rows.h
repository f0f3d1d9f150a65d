// Row grouping for sparse (COO) gradients, shared by every sparse optimizer op on the CPU.
//
// Note [Sparse rows: one deterministic pass]
// A gradient from nn.Embedding(sparse=True) / nn.EmbeddingBag(sparse=True) arrives uncoalesced:
// `nnz` row indices (duplicates allowed, any order) and `nnz` value rows of `width` elements.
// group_rows() validates every index (IndexError before anything is written) and groups the
// positions by row with a stable LSD radix sort: unique rows come out ascending, and the
// duplicates of a row keep ascending position order. Kernels then sum each row's duplicates
// in that order, in blocks (Note [Blocked duplicate sums] in math/duplicate_sum.h;
// cpu/sparse_rows_impl.h) and update each touched row once.
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

// A COO gradient for params[i], checked against it (device, dtype, shape, indices/values
// agreement), seen as `num_rows` rows of `width` elements over its sparse dims. The caller
// checks the layout first (each optimizer has torch's own message for a dense gradient).
struct CooGrad {
  int64_t sparse_dim, nnz, num_rows, width;
  at::Tensor indices, values;  // [sparse_dim, nnz], [nnz, dense dims...]
  bool coalesced;              // the gradient's is_coalesced() flag
};

inline CooGrad check_coo_grad(const char* op, const at::Tensor& p, const at::Tensor& g, size_t i) {
  TORCH_CHECK(g.device() == p.device(), op, ": grads[", i, "] is on ", g.device(), " but params[",
              i, "] is on ", p.device());
  TORCH_CHECK_TYPE(g.scalar_type() == p.scalar_type(), op, ": grads[", i, "] has dtype ",
                   g.scalar_type(), " but params[", i, "] has dtype ", p.scalar_type());
  TORCH_CHECK_VALUE(g.sym_sizes() == p.sym_sizes(), op, ": grads[", i, "] has shape ",
                    g.sym_sizes(), " but params[", i, "] has shape ", p.sym_sizes());
  CooGrad c;
  c.sparse_dim = g.sparse_dim();
  c.indices = g._indices();
  c.values = g._values();
  c.coalesced = g.is_coalesced();
  TORCH_CHECK_VALUE(c.indices.dim() == 2 && c.indices.sym_size(0) == c.sparse_dim, op,
                    ": grads[", i, "] has indices of shape ", c.indices.sym_sizes(),
                    " for sparse_dim ", c.sparse_dim);
  TORCH_CHECK_VALUE(c.values.dim() >= 1 && c.values.sym_size(0) == c.indices.sym_size(1), op,
                    ": grads[", i, "] has ", c.indices.sym_size(1), " indices but ",
                    c.values.dim() >= 1 ? c.values.sym_size(0) : c10::SymInt(0),
                    " value rows; they must match");
  TORCH_CHECK_VALUE(c.values.sym_sizes().slice(1) == p.sym_sizes().slice(c.sparse_dim), op,
                    ": grads[", i, "] has values of shape ", c.values.sym_sizes(), " for params[",
                    i, "] of shape ", p.sym_sizes(), " and sparse_dim ", c.sparse_dim);
  // the sizes the CPU and CUDA kernels use (-1 where a shape is symbolic: Meta kernels only)
  auto as_int = [](const c10::SymInt& v) { return v.maybe_as_int().value_or(-1); };
  c.nnz = as_int(c.indices.sym_size(1));
  c.num_rows = 1;
  c.width = 1;
  for (int64_t d = 0; d < p.dim(); ++d) {
    const int64_t n = as_int(p.sym_size(d));
    int64_t& prod = d < c.sparse_dim ? c.num_rows : c.width;
    prod = (n < 0 || prod < 0) ? -1 : prod * n;
  }
  return c;
}

// Note [Grouping buffers]
// glibc serves an allocation above 128 KiB with a fresh mmap, whose pages the kernel zero-fills
// on first touch. Grouping 64k lookups used ~3 MB of such buffers per call, and their page
// faults cost more than the sort itself (plain sparse SGD, width 1: 2.0 ms per call, 0.9 ms
// without the faults). So the buffers live on: the radix sort's two temporaries are per thread
// here (radix_buffer), and the ops keep their RowGroups and linearized rows per thread
// (thread_local) and refill them, reusing their capacity. A thread that steps a sparse optimizer
// keeps ~40 bytes per lookup of the largest gradient it has seen. Worker threads reach these
// buffers only through pointers and references taken on the calling thread: code running on a
// worker that named a thread_local would get the worker's own, empty, instance.
inline std::vector<uint64_t>& radix_buffer(int which) {
  static thread_local std::vector<uint64_t> buffers[2];
  return buffers[which];
}

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
inline void group_rows_packed(const int64_t* idx, int64_t nnz, int key_bits, int pos_bits,
                              RowGroups& g) {
  const int passes = (key_bits + 10) / 11;
  const int digit = passes == 0 ? 0 : (key_bits + passes - 1) / passes;
  const uint64_t mask = (uint64_t(1) << digit) - 1;
  // Note [Grouping buffers]. Plain pointers from here on: each use of a thread_local costs a
  // __tls_get_addr call in a shared library, which the compiler repeats inside the loops.
  radix_buffer(0).resize(nnz);
  radix_buffer(1).resize(nnz);
  uint64_t* a = radix_buffer(0).data();
  uint64_t* b = radix_buffer(1).data();
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
    std::swap(a, b);
  }
  const uint64_t pmask = pos_bits == 64 ? ~uint64_t(0) : (uint64_t(1) << pos_bits) - 1;
  g.order.resize(nnz);
  g.rows.clear();
  g.rows.reserve(nnz);
  g.offsets.clear();
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
}

// `idx`: nnz >= 1 row indices. Throws IndexError (nothing written anywhere) if any index is
// outside [0, num_rows); returns the largest. `what` names the op in the message.
inline int64_t check_rows(const int64_t* idx, int64_t nnz, int64_t num_rows, const char* what) {
  int64_t lo = idx[0], hi = idx[0];
  for (int64_t k = 1; k < nnz; ++k) {
    lo = std::min(lo, idx[k]);
    hi = std::max(hi, idx[k]);
  }
  TORCH_CHECK_INDEX(lo >= 0 && hi < num_rows, what, ": sparse gradient has row index ",
                    lo < 0 ? lo : hi, " out of range for a parameter with ", num_rows, " rows");
  return hi;
}

// Groups `idx` (nnz row indices) by row into `g` (refilled, its capacity reused: Note [Grouping
// buffers]), after check_rows (the same IndexError).
inline void group_rows(const int64_t* idx, int64_t nnz, int64_t num_rows, const char* what,
                       RowGroups& g) {
  g.rows.clear();
  g.order.clear();
  g.offsets.assign(1, 0);
  if (nnz == 0) return;
  const int64_t hi = check_rows(idx, nnz, num_rows, what);  // before any work; the key width
  int bits = 0;
  while (bits < 63 && (int64_t(1) << bits) <= hi) ++bits;
  int pos_bits = 0;
  while ((int64_t(1) << pos_bits) < nnz) ++pos_bits;
  if (bits + pos_bits <= 64) return group_rows_packed(idx, nnz, bits, pos_bits, g);

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
}

// Row index (over the sparse dims, row-major) of each of the gradient's nnz entries, in gradient
// order: the indices themselves when they are one contiguous sparse dim, else computed into
// `storage` (refilled: Note [Grouping buffers]). With several sparse dims every index is
// range-checked here (IndexError); with one, check_rows / group_rows check the range. The
// pointer is valid while c.indices and `storage` are.
inline const int64_t* linear_rows(const char* op, const CooGrad& c, at::IntArrayRef sizes,
                                  size_t i, std::vector<int64_t>& storage) {
  if (c.sparse_dim == 1 && c.indices.stride(1) == 1) return c.indices.data_ptr<int64_t>();
  const at::Tensor idx = c.indices.contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  std::vector<int64_t>& rows = storage;
  rows.assign(c.nnz, 0);
  for (int64_t d = 0; d < c.sparse_dim; ++d) {
    const int64_t* id = ip + d * c.nnz;
    for (int64_t k = 0; k < c.nnz; ++k) {
      TORCH_CHECK_INDEX(id[k] >= 0 && id[k] < sizes[d], op, ": grads[", i, "] has index ", id[k],
                        " in sparse dimension ", d, ", out of range for a parameter of shape ",
                        sizes);
      rows[k] = rows[k] * sizes[d] + id[k];
    }
  }
  return rows.data();
}

// Row layout of a param-shaped tensor whose first `sparse_dim` dims index rows: true when the
// trailing (dense) dims are packed row-major and the leading dims collapse into one row stride.
inline bool row_layout(const at::Tensor& t, int64_t sparse_dim, int64_t* row_stride) {
  int64_t expected = 1;  // dense part: contiguous
  for (int64_t d = t.dim() - 1; d >= sparse_dim; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return false;
    expected *= t.size(d);
  }
  // sparse part: row r = linearized index over dims [0, sparse_dim) must sit at r * stride
  int64_t stride = -1;
  for (int64_t d = sparse_dim - 1; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (stride < 0) {
      stride = t.stride(d);
      expected = t.size(d);  // rows spanned so far, in units of `stride`
    } else {
      if (t.stride(d) != stride * expected) return false;
      expected *= t.size(d);
    }
  }
  *row_stride = stride < 0 ? expected : stride;  // a single row: any stride works
  return true;
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
