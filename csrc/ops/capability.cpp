// Ops that set modes: the CPU kernel level (reported, and set by tests; see
// cpu/isa_dispatch.cpp) and the check-only mode (Note [Check-only calls] in ops/checks.h).
#include <torch/library.h>

#include <string>

#include "ops/checks.h"
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

bool set_check_only(bool on) {
  const bool previous = ops::check_only_mode();
  ops::check_only_mode() = on;
  return previous;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CatchAll, m) {
  m.impl("cpu_capability", &cpu_capability);
  m.impl("max_cpu_capability", &max_cpu_capability);
  m.impl("_set_cpu_capability", &set_cpu_capability);
  m.impl("_set_check_only", &set_check_only);
}

}  // namespace pyoptim
