// The CPU kernels of one ISA level. Each csrc/cpu/isa_<level>.cpp includes its vector header,
// defines PYOPTIM_ISA and PYOPTIM_ISA_ENUM, then includes this file.
// Rules (csrc/README.md): no torch, no STL beyond <cstdint>/<cstring>/<type_traits>, all in the ISA
// namespace or PYOPTIM_INLINE, so no code built with AVX-512 flags can leak into another level.
//
// Note [Coefficients by value]
// Every loop takes its coefficients (math::AdamCoeffs, SgdCoeffs, ...) by value, never by
// reference. Through a reference the compiler must assume each store may change them (x86
// intrinsics store through may_alias vector types; any float store may write a float field): it
// reloads them, and retests their flags (lerp_small, has_weight_decay), in every iteration. A
// by-value parameter is a local object no store can reach: its fields stay in registers or are
// broadcast once. bfloat16 AdamW at AVX2, one core, from L1: 10 % less time. The kernel table's
// entry points (adam_range, sgd_range, ...) keep the `const&` of isa.h's function types and hand
// the loops their copies.
#pragma once

#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/adam.h"
#include "pyoptim/math/sgd.h"
#include "pyoptim/math/duplicate_sum.h"
#include "pyoptim/math/sparse_adam.h"
#include "pyoptim/math/stochastic_round.h"
#include "pyoptim/math/quantize.h"
#include "pyoptim/math/rowwise_adagrad.h"

namespace pyoptim {
namespace cpu {
namespace PYOPTIM_ISA {
namespace {

#include "cpu/stream_prefetch_impl.h"  // shared by the loops over whole arrays
#include "cpu/sparse_rows_impl.h"  // shared by the sparse optimizers
#include "cpu/adam_impl.h"  // one include per optimizer
#include "cpu/sgd_impl.h"
#include "cpu/sparse_adam_impl.h"
#include "cpu/adagrad_rows_impl.h"  // Adagrad with sparse grads, row-wise Adagrad
#include "cpu/dense_impl.h"  // every dense optimizer (Note [Dense optimizers])

}  // namespace

namespace {
KernelTable make_table() {
  KernelTable t{};
  t.isa = PYOPTIM_ISA_ENUM;
  t.adam = make_adam_kernels();  // one line per optimizer
  t.sgd = make_sgd_kernels();
  t.sparse_adam = make_sparse_adam_kernels();
  t.sparse_adagrad = make_sparse_adagrad_kernels();
  t.rowwise_adagrad = make_rowwise_adagrad_kernels();
  for_each_dense([&](auto opt) {
    using Opt = decltype(opt);
    t.dense[dense_index<Opt>()] = make_dense_kernels<Opt>();
  });
  return t;
}
}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable table = make_table();
  return table;
}

}  // namespace PYOPTIM_ISA
}  // namespace cpu
}  // namespace pyoptim
