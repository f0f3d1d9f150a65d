// The one dtype dispatch of the op layer (CPU and CUDA ops alike): param dtype -> storage type.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace ops {

// Calls f(S{}) with S the storage type of a param dtype: float, double, c10::BFloat16 or
// c10::Half (the ops reject every other dtype in their checks, before they write anything).
template <class F>
void dispatch_param_dtype(at::ScalarType dtype, const F& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_INTERNAL_ASSERT(false, "unsupported dtype ", dtype, " reached a kernel");
  }
}

using math::opmath_t;

// The member of a per-dtype CPU kernel struct (cpu/isa.h: f32, f64, bf16, f16) for storage S.
template <class S, class K>
auto cpu_kernel(const K& k) {
  if constexpr (std::is_same<S, float>::value) {
    return k.f32;
  } else if constexpr (std::is_same<S, double>::value) {
    return k.f64;
  } else if constexpr (std::is_same<S, c10::BFloat16>::value) {
    return k.bf16;
  } else {
    static_assert(std::is_same<S, c10::Half>::value, "a param storage type");
    return k.f16;
  }
}

}  // namespace ops
}  // namespace pyoptim
