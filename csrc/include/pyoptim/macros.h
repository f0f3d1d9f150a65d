// Macros shared by the math headers, the CPU kernels and the CUDA kernels. Torch-free.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYOPTIM_HOST_DEVICE __host__ __device__
#define PYOPTIM_INLINE __forceinline__
#else
#define PYOPTIM_HOST_DEVICE
#define PYOPTIM_INLINE inline __attribute__((always_inline))
#endif

// Before a PYOPTIM_HOST_DEVICE template that takes a callable: the host op layer instantiates it
// with host-only callables (ops::CheckedNarrow), device code with device ones; nvcc would warn
// about the host instantiation calling a host function from a host-device one.
#if defined(__CUDACC__)
#define PYOPTIM_HD_TEMPLATE _Pragma("nv_exec_check_disable")
#else
#define PYOPTIM_HD_TEMPLATE
#endif

// Lifts a runtime bool into a constexpr one for the body (after flash-attn's BOOL_SWITCH):
//   PYOPTIM_BOOL_SWITCH(amsgrad, kAmsgrad, [&] { run<kAmsgrad>(); });
#define PYOPTIM_BOOL_SWITCH(COND, NAME, ...)      \
  [&] {                                           \
    if (COND) {                                   \
      constexpr static bool NAME = true;          \
      return __VA_ARGS__();                       \
    } else {                                      \
      constexpr static bool NAME = false;         \
      return __VA_ARGS__();                       \
    }                                             \
  }()
