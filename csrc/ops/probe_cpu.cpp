// pyoptim::_stream_probe_ on CPU: a private op for bench/ (not part of the public API).
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

#include <cstdint>

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

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) { m.impl("_stream_probe_", &stream_probe_cpu); }

}  // namespace pyoptim
