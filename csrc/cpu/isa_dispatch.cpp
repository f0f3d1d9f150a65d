// Runtime choice of the CPU kernel level: the CPU's features once (CPUID on x86-64, HWCAP on
// AArch64), capped by PYOPTIM_CPU_CAPABILITY. Built into the generic part of the extension (no
// ISA flags). Torch-free: tests/cross/neon_vs_scalar.cpp links it too.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "pyoptim/cpu/isa.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>  // getauxval(AT_HWCAP)
#endif

namespace pyoptim {
namespace cpu {

#if defined(__x86_64__) || defined(__i386__)
#define PYOPTIM_CPU_X86 1
#elif defined(__aarch64__)
#define PYOPTIM_CPU_AARCH64 1
#endif

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return "scalar";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kNeon: return "neon";
  }
  return "unknown";
}

bool isa_from_name(const char* name, CpuIsa* isa) {
  for (CpuIsa level : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kNeon}) {
    if (std::strcmp(name, isa_name(level)) == 0) {
      *isa = level;
      return true;
    }
  }
  if (std::strcmp(name, "default") == 0) {
    *isa = CpuIsa::kScalar;
    return true;
  }
  return false;
}

bool is_built_isa(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return true;
#if defined(PYOPTIM_CPU_X86)
    case CpuIsa::kAvx2:
    case CpuIsa::kAvx512: return true;
#elif defined(PYOPTIM_CPU_AARCH64)
    case CpuIsa::kNeon: return true;
#endif
    default: return false;
  }
}

const char* built_isa_names() {
#if defined(PYOPTIM_CPU_X86)
  return "scalar, avx2 or avx512";
#elif defined(PYOPTIM_CPU_AARCH64)
  return "scalar or neon";
#else
  return "scalar";
#endif
}

CpuIsa max_supported_isa() {
#if defined(PYOPTIM_CPU_X86)
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
#elif defined(PYOPTIM_CPU_AARCH64)
  // Advanced SIMD (with its float <-> half conversions) is part of the AArch64 Linux baseline;
  // the kernel still says so in HWCAP_ASIMD.
#if defined(__linux__) && defined(HWCAP_ASIMD)
  if ((getauxval(AT_HWCAP) & HWCAP_ASIMD) == 0) return CpuIsa::kScalar;
#endif
  return CpuIsa::kNeon;
#endif
  return CpuIsa::kScalar;
}

namespace {

CpuIsa initial_isa() {
  CpuIsa isa = max_supported_isa();
  const char* env = std::getenv("PYOPTIM_CPU_CAPABILITY");
  if (env != nullptr && env[0] != '\0') {
    CpuIsa cap;
    if (!isa_from_name(env, &cap) || !is_built_isa(cap)) {
      std::fprintf(stderr, "pyoptim: ignoring PYOPTIM_CPU_CAPABILITY=%s (expected %s)\n", env,
                   built_isa_names());
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
  if (!is_built_isa(isa) || static_cast<int>(isa) > static_cast<int>(max_supported_isa())) {
    return false;
  }
  isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

const KernelTable& current_kernels() {
  switch (current_isa()) {
#if defined(PYOPTIM_CPU_X86)
    case CpuIsa::kAvx512: return avx512::kernel_table();
    case CpuIsa::kAvx2: return avx2::kernel_table();
#elif defined(PYOPTIM_CPU_AARCH64)
    case CpuIsa::kNeon: return neon::kernel_table();
#endif
    default: break;
  }
  return scalar::kernel_table();
}

}  // namespace cpu
}  // namespace pyoptim
