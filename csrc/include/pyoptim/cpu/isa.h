// The CPU kernel table: what each ISA library (csrc/cpu/isa_*.cpp) exports, and how the op
// layer finds the one to run. Torch-free: shared by the ISA libraries and the op layer.
//
// Kernels are single-threaded and work on raw pointers and an element range [begin, end); the
// op layer validates, splits the work across threads and calls them. See csrc/README.md.
#pragma once

#include <cstdint>

#include "pyoptim/dense.h"
#include "pyoptim/math/adagrad.h"
#include "pyoptim/math/adam.h"
#include "pyoptim/math/rowwise_adagrad.h"
#include "pyoptim/math/sgd.h"
#include "pyoptim/math/sparse_adam.h"

namespace pyoptim {
namespace cpu {

// The levels of one build, lowest first: scalar, avx2, avx512 on x86-64; scalar, neon on
// AArch64; scalar elsewhere (setup.py compiles csrc/cpu/isa_<level>.cpp for the target's levels
// only). Values only compare within one architecture's levels (a ceiling is a higher value).
enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

const char* isa_name(CpuIsa isa);
// The level named `name` ("default" is scalar); false for an unknown name. Every architecture's
// names are known; is_built_isa says whether this build has it.
bool isa_from_name(const char* name, CpuIsa* isa);
bool is_built_isa(CpuIsa isa);
// This build's levels as text, lowest first, for messages: "scalar, avx2 or avx512".
const char* built_isa_names();

// ---- Adam / AdamW ------------------------------------------------------------------------
// Pointers to element 0 of one tensor's param, grad and state, all of the same memory layout
// and of the param's dtype, except with master weights (Note [Master weights and stochastic
// rounding] in math/stochastic_round.h): then master_param and the moments are float32.
// max_exp_avg_sq is only read when amsgrad, master_param only by the master kernels.
// sr_seed / sr_step: the stream of a stochastically rounded param (flags.stochastic_round).
struct AdamPtrs {
  void* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;
  void* master_param;
  uint64_t sr_seed;
  uint64_t sr_step;  // the step count after this step
  // 8-bit moments: one float32 scale per math::kQ8Block elements
  void* exp_avg_scale;
  void* exp_avg_sq_scale;
  // kahan: the param's compensation, in its dtype (Note [Kahan-compensated 16-bit params] in
  // math/stochastic_round.h)
  void* kahan_comp;
};
// How a float32 param's moments are stored (Note [Reduced-precision optimizer states] in
// math/quantize.h): as the param (float32), bfloat16, or 8-bit codes with block scales.
enum class StateFormat : uint8_t { kParam, kBf16, kQ8 };
struct AdamFlags {
  bool decoupled;  // AdamW
  bool amsgrad;
  bool maximize;
  bool scale;  // divide grads by coeffs.grad_scale
  bool stochastic_round;  // bfloat16 params only: store the param rounded stochastically
  StateFormat states;     // float32 params only; with kBf16 / kQ8, sr_seed keys the moments' bits
  bool kahan;             // 16-bit params only: compensated store (kahan_comp)
};
template <class T>
using AdamFn = void (*)(const AdamPtrs&, int64_t begin, int64_t end, const math::AdamCoeffs<T>&,
                        AdamFlags);
struct AdamKernels {
  AdamFn<float> f32;
  AdamFn<double> f64;
  AdamFn<float> bf16;
  AdamFn<float> f16;
  AdamFn<float> bf16_master;  // 16-bit params with float32 master weights and moments
  AdamFn<float> f16_master;
  // float32 moments <-> 8-bit codes (int8 for exp_avg, uint8 with sqrt_map for exp_avg_sq) and
  // scales, rounded to nearest (conversions of whole tensors: math/quantize.h)
  void (*q8_encode)(const float* x, int64_t n, void* codes, float* scales, bool sqrt_map);
  void (*q8_decode)(const void* codes, const float* scales, int64_t n, float* x, bool sqrt_map);
};

// ---- SGD (momentum / Nesterov) -------------------------------------------------------------
// Dense: pointers to element 0 of one tensor's param, grad and momentum buffer (all of the
// param's dtype and layout); buf is only touched when flags.momentum. With master weights
// (the *_master kernels: Note [Master weights and stochastic rounding] in
// math/stochastic_round.h), master_param and the buffer are float32.
// With stochastic rounding or reduced states, sr_seed keys the random bits (SGD has no step
// count: the op adds one to the seed tensor each step, Note [Reduced-precision optimizer
// states]); 8-bit buffers have one float32 scale per math::kQ8Block elements. With Kahan
// (16-bit params), kahan_comp holds the param's compensation (its dtype; Note [Kahan-compensated
// 16-bit params] in math/stochastic_round.h).
struct SgdPtrs {
  void* param;
  const void* grad;
  void* momentum_buffer;
  void* master_param;
  uint64_t sr_seed;
  void* buffer_scale;
  void* kahan_comp;
};
struct SgdFlags {
  bool momentum;  // momentum != 0
  bool nesterov;
  bool first_step;  // buf = grad (see Note [SGD first step] in math/sgd.h)
  bool maximize;
  bool scale;  // divide grads by coeffs.grad_scale
  bool stochastic_round;  // bfloat16 params only: store the param rounded stochastically
  StateFormat states;     // float32 params with momentum only: the buffer's format
  bool kahan;             // 16-bit params only: compensated store (kahan_comp)
};
template <class T>
using SgdFn = void (*)(const SgdPtrs&, int64_t begin, int64_t end, const math::SgdCoeffs<T>&,
                       SgdFlags);
// Sparse (COO rows): `param` / `momentum_buffer` are [num_rows, width] row-major, `values` is
// [nnz, width]; rows[u], order[offsets[u] .. offsets[u+1]) come from ops::group_rows. The kernel
// updates unique rows [u_begin, u_end); `scratch` holds 2 * `width` opmath elements (per thread).
// Plain sparse SGD (no momentum, no weight decay), as ATen's CPU add_ of a sparse grad:
// kInOrder: each entry applied in turn in gradient order (one fused multiply-add per element);
// kRoundProduct: the same with the product rounded first (math::sgd_plain_rounded; values
// without dense dims); kSumFirst: each row's duplicates summed first, then one update per row.
enum class PlainSparse : uint8_t { kInOrder, kRoundProduct, kSumFirst };
struct SgdSparsePtrs {
  void* param;
  const void* values;
  void* momentum_buffer;
  const int64_t* rows;
  const int64_t* offsets;
  const int64_t* order;
  int64_t width;
  const int64_t* index;  // [nnz] row of each value row, in gradient order (validated)
  int64_t nnz;
  PlainSparse plain;  // how plain SGD applies the entries (Note [Sparse SGD] in ops/sgd_cpu.cpp)
};
template <class T>
using SgdSparseFn = void (*)(const SgdSparsePtrs&, int64_t u_begin, int64_t u_end,
                             const math::SgdCoeffs<T>&, SgdFlags, T* scratch);
struct SgdDenseKernels {
  SgdFn<float> f32;
  SgdFn<double> f64;
  SgdFn<float> bf16;
  SgdFn<float> f16;
  SgdFn<float> bf16_master;  // 16-bit params with float32 master weights and momentum buffer
  SgdFn<float> f16_master;
};
struct SgdSparseKernels {
  SgdSparseFn<float> f32;
  SgdSparseFn<double> f64;
  SgdSparseFn<float> bf16;
  SgdSparseFn<float> f16;
};
struct SgdKernels {
  SgdDenseKernels dense;
  SgdSparseKernels sparse;
};

// ---- SparseAdam ----------------------------------------------------------------------------
// One param's touched rows, grouped by ops::group_rows (see ops/sparse_rows.h). Row r of
// param / exp_avg / exp_avg_sq starts at element r * <tensor>_row_stride of that tensor and
// holds `width` contiguous elements; value row k (of the gradient's nnz) starts at k * width.
struct SparseAdamPtrs {
  void* param;
  void* exp_avg;
  void* exp_avg_sq;
  int64_t param_row_stride;
  int64_t exp_avg_row_stride;
  int64_t exp_avg_sq_row_stride;
  const void* values;      // [nnz, width], the param's dtype
  int64_t width;
  const int64_t* rows;     // [U] unique rows, ascending
  const int64_t* offsets;  // [U + 1]
  const int64_t* order;    // [nnz] value rows grouped by row
};
struct SparseAdamFlags {
  bool maximize;
  bool weight_decay;
};
// Updates unique rows [u_begin, u_end). `scratch` holds 2 * `width` elements of the math
// type (the sum of a row's duplicates, and one block of it); one per thread.
template <class T>
using SparseAdamFn = void (*)(const SparseAdamPtrs&, int64_t u_begin, int64_t u_end,
                              const math::SparseAdamCoeffs<T>&, SparseAdamFlags, T* scratch);
struct SparseAdamKernels {
  SparseAdamFn<float> f32;
  SparseAdamFn<double> f64;
  SparseAdamFn<float> bf16;
  SparseAdamFn<float> f16;
};

// ---- Adagrad with sparse gradients, and row-wise Adagrad ------------------------------------
// One param's touched rows: rows[u], order[offsets[u] .. offsets[u+1]) from ops::group_rows, or
// rows == nullptr for a dense gradient (row u is row u of `values`, every row is touched). Row r
// of the param starts at element r * param_row_stride and holds `width` contiguous elements;
// value row k (of the gradient's nnz, or of the dense gradient) starts at k * width. The state
// sum: sparse_adagrad_, shaped like the param (row r at r * state_row_stride, the param's
// dtype); rowwise_adagrad_, one element per row (sum[r * state_row_stride], the math type).
struct AdagradRowsPtrs {
  void* param;
  void* state_sum;
  int64_t param_row_stride;
  int64_t state_row_stride;
  const void* values;  // the param's dtype
  int64_t width;
  const int64_t* rows;     // [U] unique rows, ascending; nullptr: dense
  const int64_t* offsets;  // [U + 1]
  const int64_t* order;    // [nnz]
};
// Updates unique rows [u_begin, u_end). `scratch` holds 2 * `width` elements of the math type
// (a row's duplicate sum and one block of it); one per thread.
template <class T>
using SparseAdagradFn = void (*)(const AdagradRowsPtrs&, int64_t u_begin, int64_t u_end,
                                 const math::SparseAdagradCoeffs<T>&, bool maximize,
                                 bool plain_update, T* scratch);
struct SparseAdagradKernels {
  SparseAdagradFn<float> f32;
  SparseAdagradFn<double> f64;
  SparseAdagradFn<float> bf16;
  SparseAdagradFn<float> f16;
};
struct RowwiseAdagradFlags {
  bool maximize;
  math::RowwiseDecay decay;
};
template <class T>
using RowwiseAdagradFn = void (*)(const AdagradRowsPtrs&, int64_t u_begin, int64_t u_end,
                                  const math::RowwiseAdagradCoeffs<T>&, RowwiseAdagradFlags,
                                  T* scratch);
struct RowwiseAdagradKernels {
  RowwiseAdagradFn<float> f32;
  RowwiseAdagradFn<double> f64;
  RowwiseAdagradFn<float> bf16;
  RowwiseAdagradFn<float> f16;
};

// ---- the table -----------------------------------------------------------------------------
// One member per optimizer with kernels of its own, and one entry per dense optimizer
// (Note [Dense optimizers], indexed by dense_index<Opt>()); filled by make_table() in
// cpu/kernels_impl.h.
struct KernelTable {
  CpuIsa isa;
  AdamKernels adam;
  SgdKernels sgd;
  SparseAdamKernels sparse_adam;
  SparseAdagradKernels sparse_adagrad;
  RowwiseAdagradKernels rowwise_adagrad;
  DenseKernels dense[kNumDense];
};

namespace scalar {
const KernelTable& kernel_table();
}
namespace avx2 {
const KernelTable& kernel_table();
}
namespace avx512 {
const KernelTable& kernel_table();
}
namespace neon {
const KernelTable& kernel_table();
}

// Chosen once (CPUID on x86-64, HWCAP on AArch64), capped by PYOPTIM_CPU_CAPABILITY=<level>
// (csrc/cpu/isa_dispatch.cpp).
const KernelTable& current_kernels();
CpuIsa current_isa();
CpuIsa max_supported_isa();  // what this CPU can run (ignores the environment cap)
// Test hook: run at `isa` from now on; fails (returns false) if the CPU cannot run it or this
// build has no such level.
bool set_current_isa(CpuIsa isa);

}  // namespace cpu
}  // namespace pyoptim
