// pyoptim::_stream_probe_ on CPU: a private op for bench/ (not part of the public API).
//
// One streaming pass with Adam's memory pattern: 4 arrays read, 3 written, every element once
// (o1 = a + b, o2 = c + d, o3 = a - d). Its GB/s is the roofline that bench/ compares the fp32
// Adam kernels against: same traffic, no arithmetic worth counting. It is a plain loop with no
// ISA flags on purpose: the pass is memory-bound, so the compiler's baseline vectorization is
// enough to saturate memory, and it matches what the Adam kernels can reach at best.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim._stream_probe_";
constexpr int64_t kGrain = 16 * 1024;  // elements; below this, one thread

void check_probe_arg(const at::Tensor& t, const at::Tensor& ref, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), kOp, ": ", what, " is on ", t.device(),
              "; this is the CPU kernel");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, kOp, ": ", what, " must be float32, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), kOp, ": ", what, " must be contiguous");
  TORCH_CHECK_VALUE(t.numel() == ref.numel(), kOp, ": ", what, " has ", t.numel(),
                    " elements, expected ", ref.numel());
}

void stream_probe_cpu(const at::Tensor& o1, const at::Tensor& o2, const at::Tensor& o3,
                      const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                      const at::Tensor& d) {
  check_probe_arg(o1, a, "o1");
  check_probe_arg(o2, a, "o2");
  check_probe_arg(o3, a, "o3");
  check_probe_arg(a, a, "a");
  check_probe_arg(b, a, "b");
  check_probe_arg(c, a, "c");
  check_probe_arg(d, a, "d");
  // The loop reads through __restrict__ pointers: no output may share memory with any array.
  const at::Tensor* outs[] = {&o1, &o2, &o3};
  const at::Tensor* all[] = {&o1, &o2, &o3, &a, &b, &c, &d};
  for (const at::Tensor* o : outs) {
    for (const at::Tensor* t : all) {
      TORCH_CHECK_VALUE(o == t || at::get_overlap_status(*o, *t) == at::MemOverlapStatus::No,
                        kOp, ": the outputs must not share memory with each other or the inputs");
    }
  }

  float* __restrict__ w1 = o1.data_ptr<float>();
  float* __restrict__ w2 = o2.data_ptr<float>();
  float* __restrict__ w3 = o3.data_ptr<float>();
  const float* __restrict__ ra = a.const_data_ptr<float>();
  const float* __restrict__ rb = b.const_data_ptr<float>();
  const float* __restrict__ rc = c.const_data_ptr<float>();
  const float* __restrict__ rd = d.const_data_ptr<float>();
  at::parallel_for(0, a.numel(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      w1[i] = ra[i] + rb[i];
      w2[i] = rc[i] + rd[i];
      w3[i] = ra[i] - rd[i];
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) { m.impl("_stream_probe_", &stream_probe_cpu); }

}  // namespace pyoptim
