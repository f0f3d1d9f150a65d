// CPU kernels at the scalar level, on every architecture (no ISA flags).
#include "pyoptim/cpu/vec_scalar.h"
#define PYOPTIM_ISA scalar
#define PYOPTIM_ISA_ENUM ::pyoptim::cpu::CpuIsa::kScalar
#include "cpu/kernels_impl.h"
