// Validate-before-mutate helpers shared by every op (CPU, CUDA and Meta kernels).
// See Note [All-or-nothing step] in ops/groups.h. Structural checks compare sym_sizes /
// sym_numel: under torch.compile the Meta kernel sees tensors of symbolic shape.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/TypeCast.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <vector>

namespace pyoptim {
namespace ops {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// `what[i]` matches params[pi] in device, dtype and shape, and is a strided tensor (pi: i
// unless given, for a list with several entries per param).
inline void check_like_param(const char* op, const at::Tensor& param, const at::Tensor& t,
                             const char* what, size_t i, size_t pi = static_cast<size_t>(-1)) {
  if (pi == static_cast<size_t>(-1)) pi = i;
  TORCH_CHECK_VALUE(t.defined(), op, ": ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", what, "[", i, "] must be a dense tensor, got ",
              t.layout());
  TORCH_CHECK(t.device() == param.device(), op, ": ", what, "[", i, "] is on ", t.device(),
              " but params[", pi, "] is on ", param.device(),
              "; expected all tensors to be on the same device");
  TORCH_CHECK_TYPE(t.scalar_type() == param.scalar_type(), op, ": ", what, "[", i, "] has dtype ",
                   t.scalar_type(), " but params[", pi, "] has dtype ", param.scalar_type());
  TORCH_CHECK_VALUE(t.sym_sizes() == param.sym_sizes(), op, ": ", what, "[", i, "] has shape ",
                    t.sym_sizes(), " but params[", pi, "] has shape ", param.sym_sizes());
}

// As above, with `dtype` for t's dtype (state kept in another precision than the param).
inline void check_like_param(const char* op, const at::Tensor& param, const at::Tensor& t,
                             const char* what, size_t i, at::ScalarType dtype) {
  if (dtype == param.scalar_type()) return check_like_param(op, param, t, what, i);
  TORCH_CHECK_VALUE(t.defined(), op, ": ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", what, "[", i, "] must be a dense tensor, got ",
              t.layout());
  TORCH_CHECK(t.device() == param.device(), op, ": ", what, "[", i, "] is on ", t.device(),
              " but params[", i, "] is on ", param.device(),
              "; expected all tensors to be on the same device");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", what, "[", i, "] has dtype ",
                   t.scalar_type(), " but must be ", dtype, " (params[", i, "] has dtype ",
                   param.scalar_type(), ")");
  TORCH_CHECK_VALUE(t.sym_sizes() == param.sym_sizes(), op, ": ", what, "[", i, "] has shape ",
                    t.sym_sizes(), " but params[", i, "] has shape ", param.sym_sizes());
}

// seeds[k], the seed of a stochastically rounded param or state (Note [Master weights and
// stochastic rounding]): a one-element int64 tensor on the CPU (the Meta kernel sees
// FakeTensor's meta copies).
inline void check_seed(const char* op, at::TensorList seeds, int64_t k,
                       c10::DeviceType backend) {
  const at::Tensor& sd = seeds[k];
  TORCH_CHECK_VALUE(sd.defined() && sd.sym_numel() == 1 && sd.layout() == at::kStrided, op,
                    ": sr_seeds[", k, "] must be a one-element tensor");
  TORCH_CHECK_TYPE(sd.scalar_type() == at::kLong, op, ": sr_seeds[", k, "] has dtype ",
                   sd.scalar_type(), "; a seed is an int64 tensor");
  TORCH_CHECK(sd.device().is_cpu() || backend == c10::DeviceType::Meta, op, ": sr_seeds[", k,
              "] is on ", sd.device(), "; a seed lives on the CPU");
}

// Note [Grads read by the op]
// The CPU kernels of the dense-step ops (adam_, sgd_ and the dense optimizers' ops) take an
// empty `grads` list with a non-empty `params` list to mean "each param's own .grad": reading
// them here costs less than building the list in Python and converting it into the op's
// arguments (a 1000-param step: ~0.1 ms). The optimizers pass it so when every param of the
// call has a grad (pyoptim/_state.py, Plan.implicit_grads). Returns the grads, in `own`.
// Grads read this way bypass the dispatcher, so each must be plain memory: a tensor with storage
// (a sparse grad has none; the checks after this one refuse other layouts), no Python subclass or
// mode (a wrapper subclass such as functional collectives' AsyncCollectiveTensor, a FakeTensor),
// no lazy negation or conjugation bit, not a ZeroTensor: one test of the dispatch key set per
// grad. Any other grad is refused before anything is written; the step then runs again with the
// grads listed, through the dispatcher, which handles them as torch's ops do (it once read such
// grads as raw memory: a crash, or the wrong sign for a negated view).
inline at::TensorList grads_of_params(const char* op, at::TensorList params,
                                      at::TensorList grads, std::vector<at::Tensor>& own) {
  if (!grads.empty() || params.empty()) return grads;
  static const c10::DispatchKeySet kNotPlain{
      c10::DispatchKey::Python,     c10::DispatchKey::PythonTLSSnapshot,
      c10::DispatchKey::Functionalize, c10::DispatchKey::Negative,
      c10::DispatchKey::Conjugate,  c10::DispatchKey::ZeroTensor};
  own.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK_VALUE(params[i].defined(), op, ": params[", i, "] is undefined");
    const at::Tensor& g = params[i].grad();
    TORCH_CHECK_VALUE(g.defined(), op, ": params[", i,
                      "] has no grad (an empty grads list stands for each param's .grad)");
    TORCH_CHECK_VALUE(g.has_storage() && !g.key_set().has_any(kNotPlain),
                      op, ": params[", i, "]'s grad is not plain memory (a tensor subclass, a "
                      "lazy negation or conjugation, a ZeroTensor): list the grads");
    own.push_back(g);
  }
  return own;
}

inline void check_list_size(const char* op, size_t got, size_t n, const char* what,
                            const char* per) {
  TORCH_CHECK_VALUE(got == n, op, ": expected ", n, " ", what, " (one per ", per, "), got ", got);
}

// params[i] is a defined, strided tensor of a supported floating dtype on the kernel's device
// type (`backend`: CPU, CUDA or Meta).
// `device`: params[0]'s, where every param of the call must be.
inline void check_param(const char* op, const at::Tensor& p, size_t i, c10::DeviceType backend,
                        c10::Device device) {
  TORCH_CHECK_VALUE(p.defined(), op, ": params[", i, "] is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i, "] must be a dense tensor");
  TORCH_CHECK(p.device().type() == backend, op, ": params[", i, "] is on ", p.device(),
              " but the call's tensors chose its ",
              c10::DeviceTypeName(backend, /*lower_case=*/true),
              " kernel; expected all tensors to be on the same device (one call per device)");
  TORCH_CHECK(p.device() == device, op, ": params[", i, "] is on ", p.device(),
              " but params[0] is on ", device, "; expected all tensors to be on the same device");
  TORCH_CHECK_TYPE(is_supported_float(p.scalar_type()), op, ": params[", i, "] has dtype ",
                   p.scalar_type(),
                   "; supported: float32, float64, bfloat16, float16 (complex params are "
                   "passed as real views)");
}

// True when t (sized as p) has p's strides in every dim of more than one element: the two walk
// their elements in the same memory order (a size-1 dim's stride is never used).
inline bool same_walk(const at::Tensor& t, const at::Tensor& p) {
  const auto ts = t.strides(), ps = p.strides();
  const auto sizes = p.sizes();
  if (ts.size() != ps.size()) return false;
  for (size_t d = 0; d < ps.size(); ++d) {
    if (sizes[d] > 1 && ts[d] != ps[d]) return false;
  }
  return true;
}

// True when every defined tensor in `others` has p's strides and p covers its memory densely:
// then a kernel can walk all of them as flat arrays in memory order (transposed or channels-last
// weights included) with no copy. `row_major` (8-bit states): memory order must also be the
// row-major order, the order the 256-element blocks of 8-bit states are defined on (Note
// [Reduced-precision optimizer states]), so p must be contiguous; a param in another layout is
// stepped on row-major copies.
inline bool same_dense_layout(const at::Tensor& p, std::initializer_list<const at::Tensor*> others,
                              bool row_major) {
  if (!p.is_non_overlapping_and_dense() || (row_major && !p.is_contiguous())) return false;
  for (const at::Tensor* t : others) {
    if (t->defined() && t->strides() != p.strides()) return false;
  }
  return true;
}

// Note [Work layout]
// Where the tensors of one param disagree in layout (same_dense_layout is false), the kernel
// walks work tensors that share one layout: each tensor that is already in it is used in place,
// the others are copied into it (and, if the step writes them, copied back afterwards). The
// layout is the param's own when the param is dense (a channels-last or transposed weight whose
// grad came contiguous: only the grad is copied, where row-major work tensors would copy the
// param and every state there and back, 3-8x the step's time), and row-major otherwise (a
// param that is a slice of a larger tensor: its state is row-major already). `memory_order`
// false keeps row-major work tensors for a dense param too: the stochastic modes key their
// random bits by the element's index in the walk, which was row-major in such a step before
// and stays so (bitwise identical results), and 8-bit states are defined in row-major blocks.
inline bool param_work_order(const at::Tensor& p, bool memory_order) {
  return memory_order && p.is_non_overlapping_and_dense();
}

// t (sized as p) in the work layout (Note [Work layout]): t itself where it already is, else a
// copy. `copy` false: an uninitialized tensor (a buffer the step writes before reading).
inline at::Tensor in_work_layout(const at::Tensor& t, const at::Tensor& p, bool param_order,
                                 bool copy = true) {
  if (!t.defined()) return t;
  if (param_order) {
    if (same_walk(t, p)) return t;
    at::Tensor w = at::empty_strided(p.sizes(), p.strides(), t.options());
    return copy ? w.copy_(t) : w;
  }
  if (t.is_contiguous()) return t;
  return copy ? t.contiguous() : at::empty(t.sizes(), t.options());
}

// Note [Exact overlap]
// Memory written by one step may not be written twice: two params that share elements (the same
// parameter twice, a state tensor that is a view of a param, a step count inside a param) or an
// expanded tensor make the result depend on the order of the writes. Tensors may share memory
// without sharing elements, though: `w.split(k, dim=1)` or `w[:, 0::2]` and `w[:, 1::2]` are
// disjoint views whose address ranges interleave, and torch.optim steps them. So WriteSet sorts
// the address ranges and, only for ranges that intersect, decides exactly whether two tensors
// share a byte: (1) by residues: every byte of a strided tensor lies within its element size of
// its first address modulo the gcd of both tensors' strides (in bytes), so disjoint residue
// windows mean no overlap (strided slices like 0::2 / 1::2); (2) by runs: a tensor whose
// dims, sorted by stride, nest (each stride at least the extent of the dims inside it) is a
// sorted list of contiguous runs, and two sorted run lists are merged in one pass (splits along
// any dim). A layout that fits neither is checked element by element on a bitmap.
//
// An optimizer passes the same tensors step after step, so the sort (the one superlinear part:
// 5,000 ranges for a 1000-param Adam step) is skipped when the byte ranges, in the order they
// were added, equal those of the last check this thread passed with no two ranges intersecting:
// disjoint ranges share no byte whatever their strides. Each op (`op`, a string literal) keeps
// its own last ranges.
class WriteSet {
 public:
  // Records t (a tensor the step writes) and rejects a tensor that overlaps itself (expanded).
  // Tensors with no memory (meta, no elements) are not recorded.
  void add(const at::Tensor& t, const char* what, size_t i);
  // Records t, a dense grad the op reads while it writes the recorded tensors: check() notes
  // whether it shares a byte with one of them (a grad that views its param's storage shifted
  // by an element). i is its index in the op's grads list.
  void read(const at::Tensor& t, const char* what, size_t i);
  // Raises ValueError if two recorded tensors share an element.
  void check(const char* op);
  // After check(): `grads` with each grad recorded by read() that shares a byte with a written
  // tensor replaced by a copy (in its own layout, held in `own`), so that every element reads
  // the grad from before the step, as torch.optim's ops read a grad before they write the param
  // (an elementwise kernel would read elements another thread or an earlier vector already
  // wrote). Returns `grads` itself when none does.
  at::TensorList unaliased_reads(at::TensorList grads, std::vector<at::Tensor>& own) const;
  // t (a tensor the op reads while it writes the recorded ones: a sparse grad's values, a
  // row-wise dense grad) as a contiguous tensor, copied when it shares a byte with a recorded
  // tensor, so every read sees the values from before the step (torch.optim copies a sparse
  // grad's values where it coalesces the grad). Call after the last add.
  at::Tensor unaliased(const at::Tensor& t);

 private:
  struct Entry {
    uintptr_t start, end;  // [first byte, one past the last byte]
    const at::Tensor* t;
    const char* what;
    size_t index;
    bool read;  // recorded by read(): compared with the written entries only
  };
  struct Span {
    uintptr_t start, end;
    bool operator==(const Span& o) const { return start == o.start && end == o.end; }
  };
  static Entry entry_of(const at::Tensor& t, const char* what, size_t i);

  std::vector<Entry> entries_;
  std::vector<Span> spans_;  // the entries' ranges in the order they were added
  // unaliased(): entries_ sorted by start, reach_[k] the largest end of entries_[0..k]
  std::vector<uintptr_t> reach_;
  std::vector<bool> aliased_;  // per read() index: shares a byte with a written tensor
};

// An optional one-element scalar argument (lr_tensor, grad_scale, found_inf) on the CPU or on
// the params' device.
inline void check_scalar_arg(const char* op, const std::optional<at::Tensor>& t,
                             const char* what, c10::Device dev) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->defined() && t->sym_numel() == 1, op, ": ", what,
                    " must be a one-element tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), op, ": ", what,
                   " must be a floating-point tensor, got ", t->scalar_type());
  TORCH_CHECK(t->device().is_cpu() || t->device() == dev, op, ": ", what, " is on ",
              t->device(), " but the params are on ", dev);
}

// state_steps[i], a step count the op reads and increments: a one-element real tensor on the
// CPU or on its param's device.
inline void check_step_tensor(const char* op, const at::Tensor& s, const at::Tensor& p, size_t i) {
  TORCH_CHECK_VALUE(s.defined() && s.sym_numel() == 1 && s.layout() == at::kStrided, op,
                    ": state_steps[", i, "] must be a one-element tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(s.scalar_type()) ||
                       at::isIntegralType(s.scalar_type(), /*includeBool=*/false),
                   op, ": state_steps[", i, "] has dtype ", s.scalar_type(),
                   "; a step count is a real number");
  TORCH_CHECK(s.device().is_cpu() || s.device() == p.device(), op, ": state_steps[", i,
              "] is on ", s.device(), " but params[", i, "] is on ", p.device(),
              "; a step count lives on the CPU or on its param's device");
}

// Value of a one-element real tensor (step counts, lr, grad_scale, found_inf) read on the host.
inline double scalar_value(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.numel() == 1, what, " must have one element, got ", t.numel());
  if (t.device().is_cpu()) {
    switch (t.scalar_type()) {
      case at::kFloat: return *static_cast<const float*>(t.const_data_ptr());
      case at::kDouble: return *static_cast<const double*>(t.const_data_ptr());
      default: break;
    }
  }
  return t.item<double>();
}

// Writes a step count held on the host (the counterpart of scalar_value): a float32 count (torch's
// default) directly, any other dtype through fill_.
inline void store_host_step(const at::Tensor& t, double value) {
  if (t.scalar_type() == at::kFloat) {
    *static_cast<float*>(t.data_ptr()) = static_cast<float>(value);
  } else {
    t.fill_(value);
  }
}

// A step count (read from a checkpoint or set by hand): a non-negative whole number. torch's
// bias corrections divide by 1 - beta^step, which a negative count makes 0 or a fraction makes
// meaningless; torch raises on such a count, and so do the ops, before anything is written.
inline void check_step_count(const char* op, double step, const char* what, size_t i) {
  TORCH_CHECK_VALUE(std::isfinite(step) && step >= 0.0 && step == std::floor(step), op, ": ",
                    what, "[", i, "] is ", step,
                    "; a step count must be a non-negative whole number (a corrupted or "
                    "hand-edited state['step']?)");
}

// state_steps[i]'s count read on the host and checked (check_step_count), returned as it will
// be after this step: torch counts with `step_t += 1` in the tensor's own dtype and its math
// reads that value back, so a float16 count stays at 2048 and a float32 one at 2^24, and the
// step's math uses the count it stores. An integer count whose increment does not fit its dtype
// (a uint8 count at 255, which torch wraps to 0) raises ValueError, before anything is written.
inline double next_step_count(const char* op, const at::Tensor& t, size_t i) {
  const double step = scalar_value(t, "state_steps[i]");
  check_step_count(op, step, "state_steps", i);
  const at::ScalarType dtype = t.scalar_type();
  if (dtype == at::kDouble) return step + 1.0;
  if (dtype == at::kFloat) return static_cast<float>(step + 1.0);
  const double next = step + 1.0;
  if (at::isFloatingType(dtype)) {  // float16, bfloat16, ...: rounded as the tensor stores it
    return at::scalar_tensor(next, at::TensorOptions().dtype(at::kDouble))
        .to(dtype)
        .item<double>();
  }
  double largest = 0.0;
  switch (dtype) {
    case at::kByte: largest = 255.0; break;
    case at::kChar: largest = 127.0; break;
    case at::kShort: largest = 32767.0; break;
    case at::kUInt16: largest = 65535.0; break;
    case at::kInt: largest = 2147483647.0; break;
    case at::kUInt32: largest = 4294967295.0; break;
    default: largest = 9223372036854774784.0; break;  // int64, uint64: below 2^63
  }
  TORCH_CHECK_VALUE(next <= largest, op, ": state_steps[", i, "] is ", step,
                    ", the largest count its dtype ", dtype,
                    " holds; it cannot count this step (store the count as float32 or int64)");
  return next;
}

// GradScaler's scale divides every gradient: zero, infinite or NaN would turn the step into NaN.
inline void check_grad_scale(const char* op, double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale != 0.0, op, ": grad_scale is ", scale,
                    "; it must be finite and non-zero");
}

// Narrowing of per-step coefficients on the host (Note [Narrowing coefficients] in
// math/scalar_ops.h): torch's error when a finite value does not fit. torch checks an op's
// `value` (addcdiv, addcmul, lerp) against the math type T, and an `alpha` (add) against the
// param's own dtype S, whose name its message gives.
template <class T, class S>
struct CheckedNarrow {
  T operator()(double x) const {
    return c10::checked_convert<T, double>(x, std::is_same<T, float>::value ? "float" : "double");
  }
  T alpha(double x) const {
    if (std::is_same<S, c10::BFloat16>::value) {
      c10::checked_convert<c10::BFloat16, double>(x, "c10::BFloat16");
    } else if (std::is_same<S, c10::Half>::value) {
      c10::checked_convert<c10::Half, double>(x, "c10::Half");
    }
    return (*this)(x);
  }
};

}  // namespace ops
}  // namespace pyoptim
