// CPU kernels at the neon level (AArch64 only: setup.py compiles this file for aarch64 targets).
#if !defined(__aarch64__)
#error "isa_neon.cpp is the AArch64 NEON level: setup.py builds it for aarch64 targets only"
#endif
#include "pyoptim/cpu/vec_neon.h"
#define PYOPTIM_ISA neon
#define PYOPTIM_ISA_ENUM ::pyoptim::cpu::CpuIsa::kNeon
#include "cpu/kernels_impl.h"
