// Dense optimizers: elementwise optimizers with a fixed set of state tensors, described once and
// given their op, CPU kernels (every ISA level), CUDA kernel and Meta kernel by one generic
// machinery. Torch-free: shared by the ISA libraries, the op layer and the CUDA kernels.
//
// Note [Dense optimizers]
// An optimizer whose update of one element reads only that element of the param, the gradient
// and its state tensors (Adamax, RMSprop without `centered`, Lion, ...) is a struct in its math
// header (math/adamax.h is the model) with
//   kName               its op's name, e.g. "adamax_" (torch.ops.pyoptim.adamax_)
//   kStates             how many state tensors, each shaped like the param (torch's state keys)
//   kHasStep            whether the op counts a `step` tensor per param (bias corrections)
//   kHypers, kChecks    its per-group hyper-parameters (hyper[0] is lr) and torch's checks
//   kFlags              how many per-group flags (bits of the kernel's kMask, e.g. maximize)
//   Coeffs<T>, coeffs   the per-step coefficients, computed on the host in double and narrowed
//   step<kMask>(p, g, s, c)  one element (or one vector of elements), in place
// and listed in DenseOptimizers below. Its op then has the schema
//   <kName>(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] states, Tensor(c!)[] state_steps,
//           int[] group_sizes, float[] hyper, bool[] flags, Tensor?[] lr_tensors,
//           Tensor? grad_scale=None, Tensor? found_inf=None, bool validate_only=False) -> ()
// where `states` holds state 0 of every param, then state 1 of every param, ...; `hyper` the
// kHypers values of group 0, then of group 1, ...; `flags` kFlags bools per group likewise;
// `state_steps` one step count per param (none without kHasStep). The op follows every rule of
// csrc/README.md: all checks before any write, one call over every group of a device, a Tensor
// lr, GradScaler's grad_scale (which divides g before `step`) and found_inf (skips the step and
// its count), validate_only. Adding one: csrc/README.md, "Adding an optimizer".
#pragma once

#include <cstdint>
#include <type_traits>

#include "pyoptim/macros.h"
#include "pyoptim/math/adagrad.h"
#include "pyoptim/math/adamax.h"

namespace pyoptim {

template <class... Ts>
struct TypeList {};

// ---- the list ----------------------------------------------------------------------------------
using DenseOptimizers = TypeList<math::Adamax, math::Adagrad>;

// ---- what the generic machinery derives from it --------------------------------------------
template <class T, class List>
struct IndexOf;
template <class T, class... Ts>
struct IndexOf<T, TypeList<T, Ts...>> : std::integral_constant<int, 0> {};
template <class T, class U, class... Ts>
struct IndexOf<T, TypeList<U, Ts...>>
    : std::integral_constant<int, 1 + IndexOf<T, TypeList<Ts...>>::value> {};

template <class List>
struct SizeOf;
template <class... Ts>
struct SizeOf<TypeList<Ts...>> : std::integral_constant<int, sizeof...(Ts)> {};

constexpr int kNumDense = SizeOf<DenseOptimizers>::value;
template <class Opt>
constexpr int dense_index() {
  return IndexOf<Opt, DenseOptimizers>::value;
}

// Calls f(Opt{}) for every listed optimizer.
template <class F, class... Opts>
void for_each_dense(const F& f, TypeList<Opts...>) {
  (f(Opts{}), ...);
}
template <class F>
void for_each_dense(const F& f) {
  for_each_dense(f, DenseOptimizers{});
}

// Calls f(std::integral_constant<unsigned, m>{}) for the runtime m < kCount: the kernels'
// flags (an optimizer's kFlags bits, plus GradScaler's) as a template parameter.
template <unsigned kCount, class F>
PYOPTIM_INLINE void mask_switch(unsigned m, const F& f) {
  if constexpr (kCount > 0) {
    if (m == kCount - 1) {
      f(std::integral_constant<unsigned, kCount - 1>());
    } else {
      mask_switch<kCount - 1>(m, f);
    }
  }
}

// ---- the CPU kernel table's part (cpu/dense_impl.h fills it) ----------------------------------
namespace cpu {

constexpr int kMaxDenseStates = 4;

// Pointers to element 0 of one tensor's param, grad and states (all of the param's dtype and
// layout); `coeffs` points to a DenseArgs<T> (cpu/dense_impl.h) of the optimizer's math type.
struct DensePtrs {
  void* param;
  const void* grad;
  void* state[kMaxDenseStates];
};
// flags: the optimizer's kFlags bits; `scale`: divide the gradient by GradScaler's scale.
using DenseFn = void (*)(const DensePtrs&, int64_t begin, int64_t end, const void* args,
                         unsigned flags, bool scale);
struct DenseKernels {
  DenseFn f32;
  DenseFn f64;
  DenseFn bf16;
  DenseFn f16;
};

// What a dense kernel gets besides the pointers: the coefficients and GradScaler's scale.
template <class Opt, class T>
struct DenseArgs {
  typename Opt::template Coeffs<T> coeffs;
  T grad_scale;
};

}  // namespace cpu
}  // namespace pyoptim
