// pyoptim::_stream_probe_ and pyoptim::_row_probe_ on CPU: private ops for bench/ (not part of
// the public API).
//
// One streaming pass with exactly Adam's memory pattern: four arrays read, three of them written
// back in place (x = x/2 + g, y = y/2 + g, z = z/2 - g; like p, m, v updated from g). Its GB/s is
// the roofline bench/ compares the fp32 Adam kernels against: the same traffic and the same
// number of address streams (an out-of-place 4R/3W pass has 7 streams and measured ~1.5x slower
// than Adam itself on the 2-core dev VM), no arithmetic worth counting. A plain loop with no ISA
// flags: the pass is memory-bound, so the compiler's baseline vectorization saturates memory.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim._stream_probe_";
constexpr int64_t kGrain = 16 * 1024;  // elements; below this, one thread

// __restrict__ on parameters (not on pointers captured by a lambda, which GCC ignores) lets the
// loop vectorize with no runtime alias checks.
void stream_kernel(float* __restrict__ x, float* __restrict__ y, float* __restrict__ z,
                   const float* __restrict__ g, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    x[i] = x[i] * 0.5f + gi;
    y[i] = y[i] * 0.5f + gi;
    z[i] = z[i] * 0.5f - gi;
  }
}

void check_probe_arg(const at::Tensor& t, const at::Tensor& ref, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", what, " is on ", t.device(),
              "; this is the CPU kernel");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, kOp, ": ", what, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), kOp, ": ", what, " must be contiguous");
  TORCH_CHECK_VALUE(t.numel() == ref.numel(), kOp, ": ", what, " has ", t.numel(),
                    " elements, expected ", ref.numel());
}

void stream_probe_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& z,
                      const at::Tensor& g) {
  check_probe_arg(x, g, "x");
  check_probe_arg(y, g, "y");
  check_probe_arg(z, g, "z");
  check_probe_arg(g, g, "g");
  // The loop goes through __restrict__ pointers: no two arrays may share memory.
  const at::Tensor* all[] = {&x, &y, &z, &g};
  for (int i = 0; i < 4; ++i) {
    for (int j = i + 1; j < 4; ++j) {
      TORCH_CHECK_VALUE(at::get_overlap_status(*all[i], *all[j]) == at::MemOverlapStatus::No, kOp,
                        ": the four arrays must not share memory");
    }
  }

  float* px = x.data_ptr<float>();
  float* py = y.data_ptr<float>();
  float* pz = z.data_ptr<float>();
  const float* pg = g.const_data_ptr<float>();
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    stream_kernel(px, py, pz, pg, begin, end);
  });
}

// The row probe: the sparse optimizers' memory pattern with nothing else (bench/README.md,
// "Row probe"). `rows` (nnz, ascending) holds the row of each of g's nnz value rows, so the
// value rows come grouped by row, in memory order: the best layout a gradient could have. Each
// run of equal rows sums its value rows into `acc`, then reads and writes that row of each table
// once (x = x/2 + acc, y = y/2 + acc, z = z/2 - acc), the table rows of the run kPrefetchAhead
// positions ahead in flight meanwhile. Threads split the positions at row boundaries.
constexpr const char* kRowOp = "pyoptim._row_probe_";
constexpr int64_t kPrefetchAhead = 4;  // positions; 2-16 timed alike on the dev VM

void prefetch_line_run(const float* row, int64_t width) {
  const char* b = reinterpret_cast<const char*>(row);
  for (int64_t o = 0; o < width * int64_t(sizeof(float)); o += 64) __builtin_prefetch(b + o, 1, 3);
}

void row_kernel(float* __restrict__ x, float* __restrict__ y, float* __restrict__ z,
                const float* __restrict__ g, const int64_t* __restrict__ rows, int64_t nnz,
                int64_t width, int64_t begin, int64_t end, float* __restrict__ acc) {
  int64_t k = begin;
  while (k < end) {
    const int64_t r = rows[k];
    const int64_t ahead = std::min(k + kPrefetchAhead, nnz - 1);
    const int64_t ra = rows[ahead];
    prefetch_line_run(x + ra * width, width);
    if (y != nullptr) prefetch_line_run(y + ra * width, width);
    if (z != nullptr) prefetch_line_run(z + ra * width, width);
    for (int64_t j = 0; j < width; ++j) acc[j] = g[k * width + j];
    for (++k; k < end && rows[k] == r; ++k) {
      for (int64_t j = 0; j < width; ++j) acc[j] += g[k * width + j];
    }
    float* xr = x + r * width;
    for (int64_t j = 0; j < width; ++j) xr[j] = xr[j] * 0.5f + acc[j];
    if (y != nullptr) {
      float* yr = y + r * width;
      for (int64_t j = 0; j < width; ++j) yr[j] = yr[j] * 0.5f + acc[j];
    }
    if (z != nullptr) {
      float* zr = z + r * width;
      for (int64_t j = 0; j < width; ++j) zr[j] = zr[j] * 0.5f - acc[j];
    }
  }
}

void row_probe_cpu(const at::Tensor& x, const std::optional<at::Tensor>& y,
                   const std::optional<at::Tensor>& z, const at::Tensor& g,
                   const at::Tensor& rows) {
  TORCH_CHECK(x.device().is_cpu(), kRowOp, ": x is on ", x.device(), "; this is the CPU kernel");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, kRowOp, ": x must be float32, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous(), kRowOp,
                    ": x must be a contiguous 2-D table, got shape ", x.sizes());
  const int64_t num_rows = x.size(0), width = x.size(1);
  std::vector<const at::Tensor*> all{&x, &g};
  for (const auto* t : {&y, &z}) {
    if (!t->has_value()) continue;
    const at::Tensor& v = **t;
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.is_contiguous() &&
                    v.sizes() == x.sizes(),
                kRowOp, ": y and z must be contiguous CPU float32 tables shaped as x");
    all.push_back(&v);
  }
  TORCH_CHECK(g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous() &&
                  g.dim() == 2 && g.size(1) == width,
              kRowOp, ": g must be a contiguous CPU float32 [nnz, ", width, "] tensor, got ",
              g.sizes());
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kLong && rows.dim() == 1 &&
                  rows.is_contiguous() && rows.size(0) == g.size(0),
              kRowOp, ": rows must be a contiguous CPU int64 vector of g.size(0) = ", g.size(0),
              " elements");
  for (size_t i = 0; i < all.size(); ++i) {
    for (size_t j = i + 1; j < all.size(); ++j) {
      TORCH_CHECK_VALUE(at::get_overlap_status(*all[i], *all[j]) == at::MemOverlapStatus::No,
                        kRowOp, ": the tables and g must not share memory");
    }
  }
  const int64_t nnz = rows.size(0);
  const int64_t* pr = rows.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < nnz; ++k) {
    TORCH_CHECK_INDEX(pr[k] >= 0 && pr[k] < num_rows && (k == 0 || pr[k] >= pr[k - 1]), kRowOp,
                      ": rows must be ascending row indices of x; rows[", k, "] = ", pr[k]);
  }
  if (nnz == 0 || width == 0) return;
  float* px = x.data_ptr<float>();
  float* py = y.has_value() ? y->data_ptr<float>() : nullptr;
  float* pz = z.has_value() ? z->data_ptr<float>() : nullptr;
  const float* pg = g.const_data_ptr<float>();
  at::parallel_for(0, nnz, std::max<int64_t>(1, kGrain / width), [&](int64_t b, int64_t e) {
    // a run of equal rows belongs to the chunk holding its first position
    while (b < e && b > 0 && pr[b] == pr[b - 1]) ++b;
    while (e < nnz && pr[e] == pr[e - 1]) ++e;
    std::vector<float> acc(width);
    if (b < e) row_kernel(px, py, pz, pg, pr, nnz, width, b, e, acc.data());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) {
  m.impl("_stream_probe_", &stream_probe_cpu);
  m.impl("_row_probe_", &row_probe_cpu);
}

}  // namespace pyoptim
