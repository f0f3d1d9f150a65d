// CPU kernels at the avx2 level, x86-64 targets only (setup.py gives this file alone its ISA
// flags).
#include "pyoptim/cpu/vec_avx2.h"
#define PYOPTIM_ISA avx2
#define PYOPTIM_ISA_ENUM ::pyoptim::cpu::CpuIsa::kAvx2
#include "cpu/kernels_impl.h"
