// Ops that report or set the CPU kernel level (cpu/isa_dispatch.cpp), and what was built.
#include <torch/library.h>

#include <string>
#include <vector>

#include "pyoptim/cpu/isa.h"

namespace pyoptim {
namespace {

std::string cpu_capability() { return cpu::isa_name(cpu::current_isa()); }

std::string max_cpu_capability() { return cpu::isa_name(cpu::max_supported_isa()); }

std::string set_cpu_capability(const std::string& level) {
  cpu::CpuIsa isa;
  TORCH_CHECK_VALUE(cpu::isa_from_name(level.c_str(), &isa), "unknown CPU capability '", level,
                    "' (expected ", cpu::built_isa_names(), ")");
  const std::string previous = cpu_capability();
  TORCH_CHECK_VALUE(cpu::set_current_isa(isa), "this CPU cannot run the ", level,
                    " kernels (it supports up to ", max_cpu_capability(), ")");
  return previous;
}

// This build's levels, lowest first (csrc/cpu/isa_<level>.cpp compiled for the target).
std::vector<std::string> cpu_levels() {
  std::vector<std::string> out;
  for (cpu::CpuIsa isa : {cpu::CpuIsa::kScalar, cpu::CpuIsa::kNeon, cpu::CpuIsa::kAvx2,
                          cpu::CpuIsa::kAvx512}) {
    if (cpu::is_built_isa(isa)) out.emplace_back(cpu::isa_name(isa));
  }
  return out;
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
  m.impl("cpu_levels", &cpu_levels);
  m.impl("_set_cpu_capability", &set_cpu_capability);
  m.impl("_kernel_table_isa", &kernel_table_isa);
  m.impl("_built_with_cuda", &built_with_cuda);
}

}  // namespace pyoptim
