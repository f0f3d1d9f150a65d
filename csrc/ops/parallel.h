// One parallel region for a whole list of tensors, split across threads by bytes.
//
// Each item i has n[i] elements of w[i] bytes. The items are laid end to end in a byte range
// that at::parallel_for splits into one piece per thread (respecting torch.set_num_threads);
// a piece maps back to element ranges, cut at multiples of kAlign elements (or of an item's
// own alignment, e.g. a quantization block) so two threads never
// share a vector or (for 4-byte types) a cache line. Many small tensors cost one region, not one
// each. Results never depend on the split: the kernels are element-wise.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pyoptim {
namespace ops {

class ItemSplit {
 public:
  static constexpr int64_t kAlign = 16;
  static constexpr int64_t kGrainBytes = 64 * 1024;  // below this, one thread

  // align: ranges of this item start at multiples of it (a multiple of kAlign)
  void add(int64_t numel, int64_t elem_bytes, int64_t align = kAlign) {
    numel_.push_back(numel);
    elem_bytes_.push_back(elem_bytes);
    align_.push_back(align);
    offset_.push_back(total_);
    total_ += numel * elem_bytes;
  }

  // fn(item, begin, end) for every non-empty element range; called concurrently.
  template <class F>
  void run(const F& fn) const {
    if (total_ == 0) return;
    at::parallel_for(0, total_, kGrainBytes, [&](int64_t b, int64_t e) {
      size_t i = std::upper_bound(offset_.begin(), offset_.end(), b) - offset_.begin() - 1;
      for (; i < numel_.size() && offset_[i] < e; ++i) {
        const int64_t lo = boundary(i, b), hi = boundary(i, e);
        if (lo < hi) fn(i, lo, hi);
      }
    });
  }

 private:
  // First element of item i that belongs to the piece starting at byte x.
  int64_t boundary(size_t i, int64_t x) const {
    const int64_t rel = x - offset_[i];
    if (rel <= 0) return 0;
    const int64_t elem = (rel + elem_bytes_[i] - 1) / elem_bytes_[i];
    return std::min(numel_[i], (elem + align_[i] - 1) / align_[i] * align_[i]);
  }

  std::vector<int64_t> numel_, elem_bytes_, align_, offset_;
  int64_t total_ = 0;
};

}  // namespace ops
}  // namespace pyoptim
