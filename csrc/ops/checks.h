// Validate-before-mutate helpers shared by the CPU (and CUDA) op layers.
// See Note [All-or-nothing step] in ops/library.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <initializer_list>
#include <vector>

namespace pyoptim {
namespace ops {

// Note [Check-only calls]
// One op call is all-or-nothing (Note [All-or-nothing step] in ops/library.cpp); an optimizer
// step may make several calls (one per param group, device and kind of gradient). So that a
// step, too, happens whole or not at all, the Python step makes every call twice when it makes
// more than one: first in check-only mode, in which each op runs every check it would run and
// returns before writing anything (and before work only the update needs, such as grouping
// sparse rows), then for real. The mode is per thread: pyoptim::_set_check_only
// (pyoptim._ops.check_only()) sets it, the ops read it with check_only().
inline bool& check_only_mode() {
  static thread_local bool on = false;
  return on;
}
inline bool check_only() { return check_only_mode(); }

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// `what[i]` matches params[i] in device, dtype and shape, and is a strided tensor.
inline void check_like_param(const char* op, const at::Tensor& param, const at::Tensor& t,
                             const char* what, size_t i) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", what, "[", i, "] must be a dense tensor, got ",
              t.layout());
  TORCH_CHECK(t.device() == param.device(), op, ": ", what, "[", i, "] is on ", t.device(),
              " but params[", i, "] is on ", param.device(),
              "; expected all tensors to be on the same device");
  TORCH_CHECK_TYPE(t.scalar_type() == param.scalar_type(), op, ": ", what, "[", i, "] has dtype ",
                   t.scalar_type(), " but params[", i, "] has dtype ", param.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == param.sizes(), op, ": ", what, "[", i, "] has shape ", t.sizes(),
                    " but params[", i, "] has shape ", param.sizes());
}

inline void check_list_size(const char* op, at::TensorList list, size_t n, const char* what) {
  TORCH_CHECK_VALUE(list.size() == n, op, ": expected ", n, " ", what, " (one per param), got ",
                    list.size());
}

// True when every defined tensor in `others` has p's strides and p covers its memory densely:
// then a kernel can walk all of them as flat arrays in memory order (transposed or channels-last
// weights included) with no copy.
inline bool same_dense_layout(const at::Tensor& p, std::initializer_list<const at::Tensor*> others) {
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others) {
    if (t->defined() && t->strides() != p.strides()) return false;
  }
  return true;
}

// Bytes spanned by a strided tensor, from its first element to its last.
inline int64_t span_bytes(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return (last + 1) * static_cast<int64_t>(t.element_size());
}

// Memory regions written by one step. No region may overlap another (aliased params, or state
// sharing memory with a param) or itself (expanded tensors): the result would depend on order.
class WriteSet {
 public:
  void add(const at::Tensor& t, const char* what, size_t i) {
    if (t.numel() == 0) return;
    TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, what, "[", i,
                      "] has elements that share memory (an expanded tensor?); it cannot be "
                      "updated in place");
    const auto start = reinterpret_cast<uintptr_t>(t.data_ptr());
    spans_.push_back(Span{start, start + static_cast<uintptr_t>(span_bytes(t)), what, i});
  }
  void check(const char* op) {
    std::sort(spans_.begin(), spans_.end(),
              [](const Span& a, const Span& b) { return a.start < b.start; });
    for (size_t k = 1; k < spans_.size(); ++k) {
      const Span& a = spans_[k - 1];
      const Span& b = spans_[k];
      TORCH_CHECK_VALUE(b.start >= a.end, op, ": ", a.what, "[", a.index, "] and ", b.what, "[",
                        b.index,
                        "] overlap in memory (the same parameter passed twice, or views of one "
                        "tensor); every parameter and state tensor must have memory of its own");
    }
  }

 private:
  struct Span {
    uintptr_t start, end;
    const char* what;
    size_t index;
  };
  std::vector<Span> spans_;
};

// An optional one-element scalar argument (lr_tensor, grad_scale, found_inf) on the CPU or on
// the params' device.
inline void check_scalar_arg(const char* op, const std::optional<at::Tensor>& t,
                             const char* what, c10::Device dev) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->defined() && t->numel() == 1, op, ": ", what,
                    " must be a one-element tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), op, ": ", what,
                   " must be a floating-point tensor, got ", t->scalar_type());
  TORCH_CHECK(t->device().is_cpu() || t->device() == dev, op, ": ", what, " is on ",
              t->device(), " but the params are on ", dev);
}

// Value of a one-element tensor (step counts, grad_scale, found_inf) read on the host.
inline double scalar_value(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.numel() == 1, what, " must have one element, got ", t.numel());
  if (t.device().is_cpu()) {
    switch (t.scalar_type()) {
      case at::kFloat: return *static_cast<const float*>(t.data_ptr());
      case at::kDouble: return *static_cast<const double*>(t.data_ptr());
      default: break;
    }
  }
  return t.item<double>();
}

}  // namespace ops
}  // namespace pyoptim
