// The CPU kernel table: what each ISA library (csrc/cpu/isa_*.cpp) exports, and how the op
// layer finds the one to run. Torch-free: shared by the ISA libraries and the op layer.
//
// Kernels are single-threaded and work on raw pointers and an element range [begin, end); the
// op layer validates, splits the work across threads and calls them. See csrc/README.md.
#pragma once

#include <cstdint>

#include "pyoptim/math/adam.h"

namespace pyoptim {
namespace cpu {

enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(CpuIsa isa);

// ---- Adam / AdamW ------------------------------------------------------------------------
// Pointers to element 0 of one tensor's param, grad and state, all of the param's dtype and
// the same memory layout. max_exp_avg_sq is only read when amsgrad.
struct AdamPtrs {
  void* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;
};
struct AdamFlags {
  bool decoupled;  // AdamW
  bool amsgrad;
  bool maximize;
  bool scale;  // divide grads by coeffs.grad_scale
};
template <class T>
using AdamFn = void (*)(const AdamPtrs&, int64_t begin, int64_t end, const math::AdamCoeffs<T>&,
                        AdamFlags);
struct AdamKernels {
  AdamFn<float> f32;
  AdamFn<double> f64;
  AdamFn<float> bf16;
  AdamFn<float> f16;
};

// ---- the table -----------------------------------------------------------------------------
// One member per optimizer, filled by make_table() in cpu/kernels_impl.h.
struct KernelTable {
  CpuIsa isa;
  AdamKernels adam;
};

namespace scalar {
const KernelTable& kernel_table();
}
namespace avx2 {
const KernelTable& kernel_table();
}
namespace avx512 {
const KernelTable& kernel_table();
}

// Chosen once by CPUID, capped by PYOPTIM_CPU_CAPABILITY=scalar|avx2|avx512 (csrc/cpu/isa_dispatch.cpp).
const KernelTable& current_kernels();
CpuIsa current_isa();
CpuIsa max_supported_isa();  // what this CPU can run (ignores the environment cap)
// Test hook: run at `isa` from now on; fails (returns false) if the CPU cannot run it.
bool set_current_isa(CpuIsa isa);

}  // namespace cpu
}  // namespace pyoptim
