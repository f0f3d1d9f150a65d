// Param groups in one op call, and the all-or-nothing rule every op follows.
//
// Note [All-or-nothing step]
// Every check on every tensor of a call runs before any memory is written, so an op that raises
// leaves params, state and step counts exactly as they were. An optimizer step makes one op
// call per device, covering every param group (Note [Param groups in one call]), so a step on
// one device is all-or-nothing by itself. A step over several devices makes every call first
// with `validate_only=True` (the op runs all of its checks, reads what the real call would read
// to check it, and writes nothing), then for real: an error on the last device is raised before
// the first is written. validate_only is an ordinary op argument, so the dispatcher, opcheck and
// torch.compile see it like any other.
//
// Note [Param groups in one call]
// The first group_sizes[0] tensors belong to group 0, the next group_sizes[1] to group 1, and so
// on (a group may be empty). Hyper-parameters come packed in two lists, group after group:
// `hyper` holds each group's floats and `flags` its bools, in the order the op's schema names
// (library.cpp), so entry k of group g is hyper[g * K + k] for an op with K floats per group.
// Two lists instead of one per hyper-parameter: each list argument costs torch.ops a conversion
// per call, and a step on one small param (the optimizer-in-backward recipe) is mostly that.
// Tensor lists that only some groups have (max_exp_avg_sqs of amsgrad groups, the momentum buffers
// of groups with momentum) hold one entry per tensor of those groups, in order. lr_tensors is
// empty, or holds one entry per group: a Tensor lr, or None where the group's lr is the float in
// `lr`.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "ops/checks.h"

namespace pyoptim {
namespace ops {

class Groups {
 public:
  // n: tensors in the call; `group_sizes` must add up to n.
  Groups(const char* op, at::IntArrayRef group_sizes, size_t n) : op_(op) {
    size_t total = 0;
    for (const int64_t s : group_sizes) {
      TORCH_CHECK_VALUE(s >= 0, op, ": group_sizes has a negative entry, ", s);
      // compared before adding: huge entries would wrap the sum around to n
      TORCH_CHECK_VALUE(static_cast<size_t>(s) <= n - total, op,
                        ": group_sizes add up to more than the ", n, " params");
      total += static_cast<size_t>(s);
    }
    TORCH_CHECK_VALUE(total == n, op, ": group_sizes add up to ", total, " but there are ", n,
                      " params");
    group_of_.reserve(n);
    for (size_t g = 0; g < group_sizes.size(); ++g) {
      group_of_.insert(group_of_.end(), static_cast<size_t>(group_sizes[g]),
                       static_cast<int32_t>(g));
    }
    count_ = group_sizes.size();
  }

  size_t count() const { return count_; }
  size_t of(size_t i) const { return static_cast<size_t>(group_of_[i]); }

  // A per-group list has one entry per group.
  void check_per_group(size_t len, const char* what) const {
    check_list_size(op_, len, count_, what, "param group");
  }

  // `hyper` and `flags` (see the Note): `per_group` entries for each group.
  void check_packed(size_t hyper, size_t hyper_per_group, size_t flags,
                    size_t flags_per_group) const {
    check_list_size(op_, hyper, count_ * hyper_per_group, "hyper",
                    "hyper-parameter of each param group");
    check_list_size(op_, flags, count_ * flags_per_group, "flags", "flag of each param group");
  }

  // lr_tensors: empty or one per group; entry g (if any) is a one-element floating tensor on
  // the CPU or on `dev`.
  std::vector<std::optional<at::Tensor>> lr_tensors(
      const c10::List<std::optional<at::Tensor>>& list, c10::Device dev) const {
    std::vector<std::optional<at::Tensor>> out(count_);
    if (list.size() == 0) return out;
    check_per_group(list.size(), "lr_tensors");
    for (size_t g = 0; g < count_; ++g) {
      out[g] = list.get(g);
      if (out[g].has_value() && !out[g]->defined()) out[g] = std::nullopt;
      check_scalar_arg(op_, out[g], "lr_tensors[g]", dev);
    }
    return out;
  }

 private:
  const char* op_;
  std::vector<int32_t> group_of_;
  size_t count_ = 0;
};

// Per-tensor positions in a list that only the tensors of some groups have (see the Note):
// pos[i] is tensor i's entry, or -1. `has[g]` says whether group g has the list.
inline std::vector<int64_t> positions_in_partial_list(const char* op, const Groups& groups,
                                                      size_t n, const std::vector<bool>& has,
                                                      size_t list_size, const char* what,
                                                      const char* per) {
  std::vector<int64_t> pos(n, -1);
  int64_t next = 0;
  for (size_t i = 0; i < n; ++i) {
    if (has[groups.of(i)]) pos[i] = next++;
  }
  check_list_size(op, list_size, static_cast<size_t>(next), what, per);
  return pos;
}

}  // namespace ops
}  // namespace pyoptim
