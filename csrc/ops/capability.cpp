// Ops that report or set the CPU kernel level (cpu/isa_dispatch.cpp), and what was built.
#include <torch/library.h>

#include <string>

#include "pyoptim/cpu/isa.h"

namespace pyoptim {
namespace {

std::string cpu_capability() { return cpu::isa_name(cpu::current_isa()); }

std::string max_cpu_capability() { return cpu::isa_name(cpu::max_supported_isa()); }

std::string set_cpu_capability(const std::string& level) {
  cpu::CpuIsa isa;
  if (level == "scalar") {
    isa = cpu::CpuIsa::kScalar;
  } else if (level == "avx2") {
    isa = cpu::CpuIsa::kAvx2;
  } else if (level == "avx512") {
    isa = cpu::CpuIsa::kAvx512;
  } else {
    TORCH_CHECK_VALUE(false, "unknown CPU capability '", level,
                      "' (expected scalar, avx2 or avx512)");
  }
  const std::string previous = cpu_capability();
  TORCH_CHECK_VALUE(cpu::set_current_isa(isa), "this CPU cannot run the ", level,
                    " kernels (it supports up to ", max_cpu_capability(), ")");
  return previous;
}

// Whether this build compiled the CUDA kernels (setup.py defines PYOPTIM_WITH_CUDA for them).
bool built_with_cuda() {
#ifdef PYOPTIM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The `isa` field of the table current_kernels() returns: each ISA library fills in its own.
std::string kernel_table_isa() { return cpu::isa_name(cpu::current_kernels().isa); }

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CatchAll, m) {
  m.impl("cpu_capability", &cpu_capability);
  m.impl("max_cpu_capability", &max_cpu_capability);
  m.impl("_set_cpu_capability", &set_cpu_capability);
  m.impl("_kernel_table_isa", &kernel_table_isa);
  m.impl("_built_with_cuda", &built_with_cuda);
}

}  // namespace pyoptim
