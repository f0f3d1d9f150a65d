// WriteSet: see Note [Exact overlap] in ops/checks.h.
#include "ops/checks.h"

#include <numeric>

namespace pyoptim {
namespace ops {
namespace {

// A strided tensor's dims of size > 1, sorted by stride (in bytes) from the largest.
struct Layout {
  int64_t start;  // address of the first element, in bytes
  int64_t elem;   // element size in bytes
  std::vector<int64_t> size, stride;
};

Layout layout_of(const at::Tensor& t) {
  Layout l;
  l.start = static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.const_data_ptr()));
  l.elem = static_cast<int64_t>(t.element_size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1) dims.push_back(d);
  }
  std::stable_sort(dims.begin(), dims.end(), [&](int64_t a, int64_t b) {
    return std::abs(t.stride(a)) > std::abs(t.stride(b));
  });
  for (int64_t d : dims) {
    l.size.push_back(t.size(d));
    l.stride.push_back(t.stride(d) * l.elem);
  }
  return l;
}

bool has_negative_stride(const Layout& l) {
  return std::any_of(l.stride.begin(), l.stride.end(), [](int64_t s) { return s < 0; });
}

// (1) Every byte of a tensor lies in [start, start + elem) modulo g, for g the gcd of its
// strides: disjoint windows modulo a common g mean no shared byte.
bool disjoint_by_residues(const Layout& a, const Layout& b) {
  int64_t g = 0;
  for (int64_t s : a.stride) g = std::gcd(g, s);
  for (int64_t s : b.stride) g = std::gcd(g, s);
  if (g <= 0) return false;
  const int64_t d = (((b.start - a.start) % g) + g) % g;  // b's window starts d after a's
  return d >= a.elem && d + b.elem <= g;
}

// (2) A tensor as an ascending list of contiguous byte runs: the innermost dims that are
// contiguous merge into one run; the outer dims must nest (each stride at least the extent of
// what is inside it), so the runs come out ascending and disjoint.
struct Runs {
  bool ok = false;
  int64_t run = 0;                     // bytes per run
  std::vector<int64_t> size, stride;   // outer dims, largest stride first
};

Runs runs_of(const Layout& l) {
  Runs r;
  if (has_negative_stride(l)) return r;
  int64_t run = l.elem;
  size_t inner = l.size.size();  // dims [inner, end) merged into the run
  while (inner > 0 && l.stride[inner - 1] == run) {
    run *= l.size[inner - 1];
    --inner;
  }
  int64_t extent = run;  // bytes spanned by the dims inside the current one
  for (size_t k = inner; k-- > 0;) {
    if (l.stride[k] < extent) return r;
    extent += (l.size[k] - 1) * l.stride[k];
  }
  r.ok = true;
  r.run = run;
  r.size.assign(l.size.begin(), l.size.begin() + static_cast<std::ptrdiff_t>(inner));
  r.stride.assign(l.stride.begin(), l.stride.begin() + static_cast<std::ptrdiff_t>(inner));
  return r;
}

// Walks the run starts of `r` (offset `start`) in ascending order.
class RunCursor {
 public:
  RunCursor(const Runs& r, int64_t start) : r_(r), idx_(r.size.size(), 0), pos_(start) {}
  bool done() const { return done_; }
  int64_t begin() const { return pos_; }
  int64_t end() const { return pos_ + r_.run; }
  void next() {
    for (size_t k = idx_.size(); k-- > 0;) {
      if (++idx_[k] < r_.size[k]) {
        pos_ += r_.stride[k];
        return;
      }
      pos_ -= (r_.size[k] - 1) * r_.stride[k];
      idx_[k] = 0;
    }
    done_ = true;
  }

 private:
  const Runs& r_;
  std::vector<int64_t> idx_;
  int64_t pos_;
  bool done_ = false;
};

bool overlap_by_runs(const Runs& ra, int64_t a0, const Runs& rb, int64_t b0) {
  RunCursor a(ra, a0), b(rb, b0);
  while (!a.done() && !b.done()) {
    if (a.end() <= b.begin()) {
      a.next();
    } else if (b.end() <= a.begin()) {
      b.next();
    } else {
      return true;
    }
  }
  return false;
}

// Calls f(byte offset of each element) over every element of l.
template <class F>
void for_each_element(const Layout& l, const F& f) {
  std::vector<int64_t> idx(l.size.size(), 0);
  int64_t pos = l.start;
  while (true) {
    f(pos);
    size_t k = idx.size();
    while (k-- > 0) {
      if (++idx[k] < l.size[k]) {
        pos += l.stride[k];
        break;
      }
      pos -= (l.size[k] - 1) * l.stride[k];
      idx[k] = 0;
    }
    if (k == static_cast<size_t>(-1)) return;
  }
}

// (3) Any layout: mark a's bytes on a bitmap of cells (the gcd of every byte distance involved),
// then test b's.
bool overlap_by_bitmap(const Layout& a, const Layout& b, int64_t lo, int64_t hi) {
  int64_t g = std::gcd(a.elem, b.elem);
  g = std::gcd(g, a.start - lo);
  g = std::gcd(g, b.start - lo);
  for (int64_t s : a.stride) g = std::gcd(g, std::abs(s));
  for (int64_t s : b.stride) g = std::gcd(g, std::abs(s));
  const int64_t cells = (hi - lo + g - 1) / g;
  std::vector<uint64_t> bits(static_cast<size_t>((cells + 63) / 64), 0);
  for_each_element(a, [&](int64_t pos) {
    for (int64_t c = (pos - lo) / g, e = c + a.elem / g; c < e; ++c) {
      bits[static_cast<size_t>(c >> 6)] |= uint64_t(1) << (c & 63);
    }
  });
  bool hit = false;
  for_each_element(b, [&](int64_t pos) {
    for (int64_t c = (pos - lo) / g, e = c + b.elem / g; c < e && !hit; ++c) {
      hit = (bits[static_cast<size_t>(c >> 6)] >> (c & 63)) & 1;
    }
  });
  return hit;
}

// A tensor whose layout at::has_internal_overlap cannot decide (it finds stride 0 only, not
// as_strided rows that overlap): do two of its elements share a byte? Not where its dims nest
// (runs_of); else on a bitmap, as (3).
bool overlaps_itself(const at::Tensor& t) {
  const Layout l = layout_of(t);
  if (runs_of(l).ok || has_negative_stride(l)) return false;
  int64_t g = l.elem, reach = l.elem;
  for (size_t k = 0; k < l.size.size(); ++k) {
    g = std::gcd(g, l.stride[k]);
    reach += (l.size[k] - 1) * l.stride[k];
  }
  const int64_t cells = (reach + g - 1) / g;
  std::vector<uint64_t> bits(static_cast<size_t>((cells + 63) / 64), 0);
  bool hit = false;
  for_each_element(l, [&](int64_t pos) {
    for (int64_t c = (pos - l.start) / g, e = c + l.elem / g; c < e && !hit; ++c) {
      const uint64_t bit = uint64_t(1) << (c & 63);
      hit = (bits[static_cast<size_t>(c >> 6)] & bit) != 0;
      bits[static_cast<size_t>(c >> 6)] |= bit;
    }
  });
  return hit;
}

// Two tensors whose address ranges intersect: do they share a byte?
bool share_a_byte(const at::Tensor& ta, const at::Tensor& tb, int64_t lo, int64_t hi) {
  const Layout a = layout_of(ta), b = layout_of(tb);
  if (disjoint_by_residues(a, b)) return false;
  const Runs ra = runs_of(a), rb = runs_of(b);
  if (ra.ok && rb.ok) return overlap_by_runs(ra, a.start, rb, b.start);
  if (has_negative_stride(a) || has_negative_stride(b)) return true;  // not ours to untangle
  return overlap_by_bitmap(a, b, lo, hi);
}

}  // namespace

// t's byte range, [its lowest byte, one past its highest byte]; t has storage and elements.
WriteSet::Entry WriteSet::entry_of(const at::Tensor& t, const char* what, size_t i) {
  const auto base = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const auto esize = static_cast<int64_t>(t.element_size());
  if (t.numel() == 1 || t.is_contiguous()) {  // the common case: one dense range from data_ptr
    return Entry{base, base + static_cast<uintptr_t>(t.numel() * esize), &t, what, i, false};
  }
  int64_t first = 0, last = 0;  // element offsets of the lowest and the highest element
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach < 0 ? first : last) += reach;
  }
  return Entry{base + static_cast<uintptr_t>(first * esize),
               base + static_cast<uintptr_t>((last + 1) * esize), &t, what, i, false};
}

void WriteSet::add(const at::Tensor& t, const char* what, size_t i) {
  if (t.device().is_meta() || !t.has_storage()) return;
  if (t.numel() == 0) return;
  if (t.numel() > 1 && !t.is_contiguous()) {
    const at::MemOverlap overlap = at::has_internal_overlap(t);
    TORCH_CHECK_VALUE(overlap == at::MemOverlap::No ||
                          (overlap == at::MemOverlap::TooHard && !overlaps_itself(t)),
                      what, "[", i,
                      "] has elements that share memory (an expanded tensor?); it cannot be "
                      "updated in place");
  }
  entries_.push_back(entry_of(t, what, i));
  spans_.push_back(Span{entries_.back().start, entries_.back().end});
  reach_.clear();
}

void WriteSet::read(const at::Tensor& t, const char* what, size_t i) {
  if (t.device().is_meta() || !t.has_storage() || t.numel() == 0) return;
  entries_.push_back(entry_of(t, what, i));
  entries_.back().read = true;
  spans_.push_back(Span{entries_.back().start, entries_.back().end});
  reach_.clear();
}

at::TensorList WriteSet::unaliased_reads(at::TensorList grads,
                                         std::vector<at::Tensor>& own) const {
  if (std::find(aliased_.begin(), aliased_.end(), true) == aliased_.end()) return grads;
  if (grads.data() != own.data()) own.assign(grads.begin(), grads.end());
  for (size_t i = 0; i < aliased_.size(); ++i) {
    if (aliased_[i]) own[i] = own[i].clone(at::MemoryFormat::Preserve);
  }
  return own;
}

at::Tensor WriteSet::unaliased(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();  // a copy already unless t is contiguous
  if (!c.is_same(t) || c.device().is_meta() || !c.has_storage() || c.numel() == 0) return c;
  if (reach_.size() != entries_.size()) {
    std::sort(entries_.begin(), entries_.end(),
              [](const Entry& a, const Entry& b) { return a.start < b.start; });
    reach_.resize(entries_.size());
    uintptr_t end = 0;
    for (size_t k = 0; k < entries_.size(); ++k) reach_[k] = end = std::max(end, entries_[k].end);
  }
  const Entry r = entry_of(c, "", 0);
  // entries that start before r ends, walked back while some of them reach past r's start
  size_t k = static_cast<size_t>(
      std::partition_point(entries_.begin(), entries_.end(),
                           [&](const Entry& e) { return e.start < r.end; }) -
      entries_.begin());
  for (; k > 0 && reach_[k - 1] > r.start; --k) {
    const Entry& e = entries_[k - 1];
    if (!e.read && e.end > r.start &&
        share_a_byte(*e.t, c, static_cast<int64_t>(std::min(e.start, r.start)),
                     static_cast<int64_t>(std::max(e.end, r.end)))) {
      return c.clone(at::MemoryFormat::Contiguous);
    }
  }
  return c;
}

void WriteSet::check(const char* op) {
  reach_.clear();  // entries_ is sorted again below
  // this thread's last ranges per op that passed with none intersecting (see the class comment)
  thread_local std::vector<std::pair<const char*, std::vector<Span>>> passed;
  auto last = std::find_if(passed.begin(), passed.end(),
                           [&](const auto& e) { return e.first == op; });
  if (last != passed.end() && last->second == spans_) return;
  std::sort(entries_.begin(), entries_.end(),
            [](const Entry& a, const Entry& b) { return a.start < b.start; });
  // Sweep: every earlier entry whose range reaches past this one's start is compared exactly.
  std::vector<size_t> open;
  bool intersecting = false;
  for (size_t k = 0; k < entries_.size(); ++k) {
    const Entry& b = entries_[k];
    open.erase(std::remove_if(open.begin(), open.end(),
                              [&](size_t j) { return entries_[j].end <= b.start; }),
               open.end());
    for (size_t j : open) {
      const Entry& a = entries_[j];
      if (a.read && b.read) continue;  // two grads may share memory: neither is written
      intersecting = true;
      const bool same = a.t->is_same(*b.t);
      if (a.read || b.read) {
        const Entry& r = a.read ? a : b;
        if (same || share_a_byte(*a.t, *b.t, static_cast<int64_t>(std::min(a.start, b.start)),
                                 static_cast<int64_t>(std::max(a.end, b.end)))) {
          if (aliased_.size() <= r.index) aliased_.resize(r.index + 1, false);
          aliased_[r.index] = true;
        }
        continue;
      }
      TORCH_CHECK_VALUE(
          !same && !share_a_byte(*a.t, *b.t, static_cast<int64_t>(std::min(a.start, b.start)),
                                 static_cast<int64_t>(std::max(a.end, b.end))),
          op, ": ", a.what, "[", a.index, "] and ", b.what, "[", b.index,
          "] overlap in memory (the same parameter passed twice, in two param groups, or "
          "views of one tensor that share elements); every parameter and state tensor must "
          "have elements of its own");
    }
    open.push_back(k);
  }
  if (intersecting) return;
  if (last == passed.end()) {
    passed.emplace_back(op, std::vector<Span>());
    last = passed.end() - 1;
  }
  last->second.swap(spans_);
}

}  // namespace ops
}  // namespace pyoptim
