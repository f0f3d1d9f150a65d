// CPU kernels at the avx512 level, x86-64 targets only (setup.py gives this file alone its ISA
// flags).
#include "pyoptim/cpu/vec_avx512.h"
#define PYOPTIM_ISA avx512
#define PYOPTIM_ISA_ENUM ::pyoptim::cpu::CpuIsa::kAvx512
#include "cpu/kernels_impl.h"
