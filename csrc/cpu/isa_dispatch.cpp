// Runtime choice of the CPU kernel level: CPUID once, capped by PYOPTIM_CPU_CAPABILITY.
// Built into the generic part of the extension (no ISA flags).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "pyoptim/cpu/isa.h"

namespace pyoptim {
namespace cpu {

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "unknown";
}

CpuIsa max_supported_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return CpuIsa::kAvx2;
  }
#endif
  return CpuIsa::kScalar;
}

namespace {

CpuIsa initial_isa() {
  CpuIsa isa = max_supported_isa();
  const char* env = std::getenv("PYOPTIM_CPU_CAPABILITY");
  if (env != nullptr && env[0] != '\0') {
    CpuIsa cap;
    if (std::strcmp(env, "scalar") == 0 || std::strcmp(env, "default") == 0) {
      cap = CpuIsa::kScalar;
    } else if (std::strcmp(env, "avx2") == 0) {
      cap = CpuIsa::kAvx2;
    } else if (std::strcmp(env, "avx512") == 0) {
      cap = CpuIsa::kAvx512;
    } else {
      std::fprintf(stderr,
                   "pyoptim: ignoring PYOPTIM_CPU_CAPABILITY=%s (expected scalar, avx2 or avx512)\n",
                   env);
      return isa;
    }
    if (static_cast<int>(cap) < static_cast<int>(isa)) isa = cap;  // a ceiling, like ATen's
  }
  return isa;
}

std::atomic<int>& isa_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

CpuIsa current_isa() { return static_cast<CpuIsa>(isa_slot().load(std::memory_order_relaxed)); }

bool set_current_isa(CpuIsa isa) {
  if (static_cast<int>(isa) > static_cast<int>(max_supported_isa())) return false;
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

const KernelTable& current_kernels() {
  switch (current_isa()) {
    case CpuIsa::kAvx512: return avx512::kernel_table();
    case CpuIsa::kAvx2: return avx2::kernel_table();
    case CpuIsa::kScalar: break;
  }
  return scalar::kernel_table();
}

}  // namespace cpu
}  // namespace pyoptim
