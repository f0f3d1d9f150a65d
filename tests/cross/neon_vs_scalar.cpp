// The NEON kernel table against the scalar one, bit for bit, with no torch: every kernel of
// pyoptim::cpu::KernelTable (Adam / AdamW, dense and sparse SGD, SparseAdam, sparse and row-wise
// Adagrad, every dense optimizer) for every param dtype, flag combination and a set of edge
// sizes, on inputs that include NaN (quiet and signalling), infinities, signed zeros and
// subnormals. Also the runtime choice of the level (csrc/cpu/isa_dispatch.cpp).
//
// Built for AArch64 from the extension's own sources (csrc/cpu/isa_scalar.cpp, isa_neon.cpp,
// isa_dispatch.cpp) and run under qemu-aarch64 on any machine: tools/cross_test.sh (make
// test-cross). Exit status 0 when every output byte agrees; 1 with the first difference of each
// failing case otherwise.
//
//   neon_vs_scalar                     all kernels, then the dispatch checks
//   neon_vs_scalar --dispatch=<level>  only: current_isa() is <level> (PYOPTIM_CPU_CAPABILITY)
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "pyoptim/cpu/dtypes.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/dense.h"
#include "pyoptim/math/sparse_adam.h"

namespace {

using namespace pyoptim;
using namespace pyoptim::cpu;

// ---- dtypes ------------------------------------------------------------------------------------
template <class S>
const char* dtype_name();
template <>
const char* dtype_name<float>() { return "float32"; }
template <>
const char* dtype_name<double>() { return "float64"; }
template <>
const char* dtype_name<bf16>() { return "bfloat16"; }
template <>
const char* dtype_name<fp16>() { return "float16"; }

// The table entry of storage type S in any of the per-dtype kernel structs.
template <class S, class K>
auto pick(const K& k) {
  if constexpr (std::is_same<S, float>::value) return k.f32;
  if constexpr (std::is_same<S, double>::value) return k.f64;
  if constexpr (std::is_same<S, bf16>::value) return k.bf16;
  if constexpr (std::is_same<S, fp16>::value) return k.f16;
}

template <class S>
S from_bits(uint64_t b) {
  S s;
  std::memcpy(&s, &b, sizeof(S));  // little-endian: the low sizeof(S) bytes
  return s;
}

template <class S>
constexpr int mantissa_bits() {
  return std::is_same<S, double>::value ? 52 : std::is_same<S, float>::value ? 23
         : std::is_same<S, bf16>::value ? 7 : 10;
}

// ---- inputs ------------------------------------------------------------------------------------
std::mt19937_64 rng(20261202);

double uniform(double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

// A value of storage type S: mostly uniform in [lo, hi], sometimes zero of either sign, a
// subnormal of S, a value near float16's largest or one that narrows to a float16 subnormal
// (none below zero when lo >= 0: a negative second moment would make a NaN of its own).
template <class S>
S value(double lo, double hi) {
  using T = opmath_t<S>;
  const uint64_t sign = lo < 0 ? rng() & 1 : 0;
  switch (static_cast<int>(rng() % 32)) {
    case 0: return from_opmath<S>(T(0));
    case 1: return from_opmath<S>(-T(0));
    case 2: return from_bits<S>((1 + rng() % 7) | sign << (8 * sizeof(S) - 1));  // subnormal
    case 3: return from_opmath<S>(T((sign ? -1 : 1) * uniform(0, 6e4)));
    case 4: return from_opmath<S>(T((sign ? -1 : 1) * uniform(0, 1e-6)));
    default: return from_opmath<S>(T(uniform(lo, hi)));
  }
}

template <class S>
std::vector<S> values(int64_t n, double lo, double hi) {
  std::vector<S> v(static_cast<size_t>(n));
  for (auto& x : v) x = value<S>(lo, hi);
  return v;
}

// Note [NaN inputs of the cross test]
// IEEE 754 does not say which of two NaN operands an operation returns, nor the sign of an
// arithmetic NaN result, and GCC uses both freedoms without fast-math: it may swap the operands
// of + and *, and folds a negation into the next multiply or fma (maximize's -g, then
// fma(g, -lr, p) becomes fma(g, lr, p)), exact for numbers but not for a NaN's sign. Scalar and
// vector code of one expression come out differently (on x86 too: avx2 and scalar give NaNs of
// opposite signs there). So an element's inputs carry at most one NaN or infinity (the NaNs of
// one case share one bit pattern: quiet or signalling, either sign, with a payload), and a NaN
// result matches when its bits match up to the sign; every other result matches bit for bit.
template <class S>
S nan_of_case(uint64_t pattern) {
  const bool quiet = pattern & 1, negative = pattern & 2;
  const int bits = 8 * sizeof(S);
  const int mant = mantissa_bits<S>();
  const uint64_t exp_all = ((uint64_t(1) << (bits - 1 - mant)) - 1) << mant;
  const uint64_t payload = quiet ? (uint64_t(1) << (mant - 1)) | 5 : 5;
  return from_bits<S>(exp_all | payload | (uint64_t(negative) << (bits - 1)));
}

template <class S>
S special(uint64_t pattern) {
  using T = opmath_t<S>;
  switch (rng() % 3) {
    case 0: return from_opmath<S>(T(1) / T(0));
    case 1: return from_opmath<S>(-T(1) / T(0));
    default: return nan_of_case<S>(pattern);
  }
}

// Dense kernels: about one element in 16 gets a NaN or an infinity in one of its arrays.
template <class S>
void add_specials(const std::vector<std::vector<S>*>& arrays) {
  const uint64_t pattern = rng();
  const size_t n = arrays[0]->size();
  for (size_t i = 0; i < n; ++i) {
    if (rng() % 16 != 0) continue;
    (*arrays[rng() % arrays.size()])[i] = special<S>(pattern);
  }
}
// Sparse kernels: an element of the param or state is updated from several value rows (the
// duplicates of its row, summed), so the specials of one case go to one array only, and a value
// array (the last one) gets only the case's NaN, never an infinity (+inf + -inf is a second NaN).
template <class S>
void add_specials_one(std::initializer_list<std::vector<S>*> arrays) {
  const uint64_t pattern = rng();
  const size_t pick = rng() % arrays.size();
  const bool values_array = pick == arrays.size() - 1;
  for (auto& x : **(arrays.begin() + pick)) {
    if (rng() % 64 == 0) x = values_array ? nan_of_case<S>(pattern) : special<S>(pattern);
  }
}

// ---- comparison ---------------------------------------------------------------------------------
int64_t g_cases = 0, g_elements = 0, g_failures = 0, g_nan_signs = 0;

template <class S>
bool is_nan_bits(uint64_t b) {
  const int bits = 8 * sizeof(S);
  const int mant = mantissa_bits<S>();
  const uint64_t abs = b & ((uint64_t(1) << (bits - 1)) - 1);
  return abs > (((uint64_t(1) << (bits - 1 - mant)) - 1) << mant);
}

// Bit for bit, but for the sign of a NaN (Note [NaN inputs of the cross test]).
template <class S>
bool same(const std::vector<S>& neon, const std::vector<S>& scalar, const std::string& what) {
  g_elements += static_cast<int64_t>(neon.size());
  if (neon.size() == scalar.size() &&
      std::memcmp(neon.data(), scalar.data(), neon.size() * sizeof(S)) == 0) {
    return true;
  }
  const uint64_t sign = uint64_t(1) << (8 * sizeof(S) - 1);
  for (size_t i = 0; i < neon.size(); ++i) {
    uint64_t a = 0, b = 0;
    std::memcpy(&a, &neon[i], sizeof(S));
    std::memcpy(&b, &scalar[i], sizeof(S));
    if (a == b) continue;
    if (is_nan_bits<S>(a) && (a ^ b) == sign) {
      ++g_nan_signs;
      continue;
    }
    if (g_failures < 20) {
      std::printf("MISMATCH %s %s: element %zu of %zu: neon 0x%" PRIx64 " scalar 0x%" PRIx64 "\n",
                  what.c_str(), dtype_name<S>(), i, neon.size(), a, b);
    }
    ++g_failures;
    return false;
  }
  return true;
}

// Sizes around every vector width of the levels (2, 4, 8 elements and the paired 8 of bfloat16),
// a few hundred, and non-multiples.
const int64_t kSizes[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100, 255, 257, 515};
// The first element of the range: 0, or 3 (vectors start off the allocation's alignment).
const int64_t kBegins[] = {0, 3};

const KernelTable& scalar_table() { return scalar::kernel_table(); }
const KernelTable& neon_table() { return neon::kernel_table(); }

std::string flags_text(std::initializer_list<std::pair<const char*, bool>> flags) {
  std::string s;
  for (const auto& f : flags) {
    if (f.second) s += std::string(s.empty() ? "" : "+") + f.first;
  }
  return s.empty() ? "plain" : s;
}

// ---- Adam / AdamW -------------------------------------------------------------------------------
template <class S>
void adam_cases() {
  using T = opmath_t<S>;
  for (int bits = 0; bits < 16; ++bits) {
    const AdamFlags f{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0};
    for (double beta1 : {0.9, 0.3}) {  // torch's lerp formulas: weight below / above 0.5
      for (double wd : {0.0, 0.1}) {
        for (double step : {1.0, 7.0}) {
          const auto c = math::make_adam_coeffs<T>(1e-2, beta1, 0.999, 1e-8, wd, f.decoupled,
                                                   step, f.scale ? 1024.0 : 1.0);
          for (int64_t n : kSizes) {
            for (int64_t begin : kBegins) {
              if (begin > n) continue;
              std::vector<S> p = values<S>(n, -1, 1), g = values<S>(n, -2, 2),
                             m = values<S>(n, -0.1, 0.1), v = values<S>(n, 0, 0.01),
                             x = values<S>(n, 0, 0.02);
              add_specials<S>({&p, &g, &m, &v, &x});
              std::vector<S> p2 = p, m2 = m, v2 = v, x2 = x;
              pick<S>(scalar_table().adam)(
                  AdamPtrs{p.data(), g.data(), m.data(), v.data(), x.data()}, begin, n, c, f);
              pick<S>(neon_table().adam)(
                  AdamPtrs{p2.data(), g.data(), m2.data(), v2.data(), x2.data()}, begin, n, c, f);
              const std::string what =
                  "adam[" +
                  flags_text({{"adamw", f.decoupled}, {"amsgrad", f.amsgrad},
                              {"maximize", f.maximize}, {"grad_scale", f.scale}}) +
                  " beta1=" + std::to_string(beta1) + " wd=" + std::to_string(wd) +
                  " n=" + std::to_string(n) + " begin=" + std::to_string(begin) + "]";
              ++g_cases;
              same(p2, p, what + " param") && same(m2, m, what + " exp_avg") &&
                  same(v2, v, what + " exp_avg_sq") && same(x2, x, what + " max_exp_avg_sq");
            }
          }
        }
      }
    }
  }
}

// ---- SGD, dense ---------------------------------------------------------------------------------
SgdFlags sgd_flags(int bits) {
  return SgdFlags{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0,
                  (bits & 16) != 0};
}
std::string sgd_text(const SgdFlags& f) {
  return flags_text({{"momentum", f.momentum}, {"nesterov", f.nesterov},
                     {"first_step", f.first_step}, {"maximize", f.maximize},
                     {"grad_scale", f.scale}});
}

template <class S>
void sgd_dense_cases() {
  using T = opmath_t<S>;
  for (int bits = 0; bits < 32; ++bits) {
    const SgdFlags f = sgd_flags(bits);
    if (!f.momentum && (f.nesterov || f.first_step)) continue;  // unused without momentum
    for (double wd : {0.0, 1e-2}) {
      for (double dampening : {0.0, 0.1}) {
        const auto c = math::make_sgd_coeffs<T>(1e-2, 0.9, dampening, wd, f.scale ? 1024.0 : 1.0);
        for (int64_t n : kSizes) {
          for (int64_t begin : kBegins) {
            if (begin > n) continue;
            std::vector<S> p = values<S>(n, -1, 1), g = values<S>(n, -2, 2),
                           b = values<S>(n, -0.5, 0.5);
            add_specials<S>({&p, &g, &b});
            std::vector<S> p2 = p, b2 = b;
            pick<S>(scalar_table().sgd.dense)(SgdPtrs{p.data(), g.data(), b.data()}, begin, n, c,
                                              f);
            pick<S>(neon_table().sgd.dense)(SgdPtrs{p2.data(), g.data(), b2.data()}, begin, n, c,
                                            f);
            const std::string what = "sgd[" + sgd_text(f) + " wd=" + std::to_string(wd) +
                                     " dampening=" + std::to_string(dampening) +
                                     " n=" + std::to_string(n) +
                                     " begin=" + std::to_string(begin) + "]";
            ++g_cases;
            same(p2, p, what + " param") && same(b2, b, what + " momentum_buffer");
          }
        }
      }
    }
  }
}

// ---- sparse rows (SGD and SparseAdam) -----------------------------------------------------------
// A sparse gradient's index and what ops::group_rows makes of it: unique rows ascending, the
// value rows of each (in position order) and their offsets.
struct SparseRows {
  int64_t num_rows;
  std::vector<int64_t> index, rows, offsets, order;
};

SparseRows sparse_rows(int64_t num_rows, int64_t nnz, int64_t hot_duplicates) {
  SparseRows s;
  s.num_rows = num_rows;
  for (int64_t k = 0; k < nnz; ++k) s.index.push_back(static_cast<int64_t>(rng() % num_rows));
  // one row seen more than math::kDuplicateBlock times: the blocked duplicate sum
  for (int64_t k = 0; k < hot_duplicates; ++k) {
    s.index.insert(s.index.begin() + static_cast<int64_t>(rng() % (s.index.size() + 1)), 1);
  }
  s.offsets.push_back(0);
  for (int64_t r = 0; r < num_rows; ++r) {
    const size_t before = s.order.size();
    for (size_t k = 0; k < s.index.size(); ++k) {
      if (s.index[k] == r) s.order.push_back(static_cast<int64_t>(k));
    }
    if (s.order.size() != before) {
      s.rows.push_back(r);
      s.offsets.push_back(static_cast<int64_t>(s.order.size()));
    }
  }
  return s;
}

const int64_t kWidths[] = {1, 2, 3, 4, 5, 8, 9, 17, 33, 100};

// The unique-row splits of one call: all rows at once, and two calls (two threads' shares).
std::vector<std::pair<int64_t, int64_t>> row_splits(int64_t u) {
  std::vector<std::pair<int64_t, int64_t>> s{{0, u}};
  if (u >= 2) s = {{0, u / 2}, {u / 2, u}};
  return s;
}

template <class S>
void sgd_sparse_cases() {
  using T = opmath_t<S>;
  for (int bits = 0; bits < 32; ++bits) {
    const SgdFlags f = sgd_flags(bits);
    if (!f.momentum && (f.nesterov || f.first_step)) continue;
    for (double wd : {0.0, 1e-2}) {  // no momentum and no weight decay: the sequential path
      const auto c = math::make_sgd_coeffs<T>(1e-2, 0.9, 0.1, wd, f.scale ? 1024.0 : 1.0);
      for (int64_t width : kWidths) {
        // plain SGD's three ways to apply the entries (values without dense dims: width 1)
        const bool plain_sgd = !f.momentum && wd == 0.0;
        for (PlainSparse plain :
             {PlainSparse::kInOrder, PlainSparse::kRoundProduct, PlainSparse::kSumFirst}) {
          if (plain != PlainSparse::kInOrder && !plain_sgd) continue;
          if (plain == PlainSparse::kRoundProduct && width != 1) continue;
          for (int64_t hot : {int64_t(0), int64_t(300)}) {
            if (hot && width > 9) continue;
            const SparseRows r = sparse_rows(12, 30, hot);
            const int64_t nnz = static_cast<int64_t>(r.index.size());
            std::vector<S> p = values<S>(r.num_rows * width, -1, 1),
                           vals = values<S>(nnz * width, -2, 2),
                           b = values<S>(r.num_rows * width, -0.5, 0.5);
            add_specials_one<S>({&p, &b, &vals});
            std::vector<S> p2 = p, b2 = b;
            std::vector<T> scratch(2 * width);
            const int64_t u = static_cast<int64_t>(r.rows.size());
            for (auto split : row_splits(u)) {
              for (int side = 0; side < 2; ++side) {
                const SgdSparsePtrs a{side ? p2.data() : p.data(), vals.data(),
                                      side ? b2.data() : b.data(), r.rows.data(),
                                      r.offsets.data(), r.order.data(), width, r.index.data(), nnz,
                                      plain};
                pick<S>((side ? neon_table() : scalar_table()).sgd.sparse)(
                    a, split.first, split.second, c, f, scratch.data());
              }
            }
            const std::string what = "sgd_sparse[" + sgd_text(f) + " wd=" + std::to_string(wd) +
                                     " plain=" + std::to_string(int(plain)) +
                                     " width=" + std::to_string(width) +
                                     " nnz=" + std::to_string(nnz) + "]";
            ++g_cases;
            same(p2, p, what + " param") && same(b2, b, what + " momentum_buffer");
          }
        }
      }
    }
  }
}

template <class S>
void sparse_adam_cases() {
  using T = opmath_t<S>;
  for (int bits = 0; bits < 4; ++bits) {
    const SparseAdamFlags f{(bits & 1) != 0, (bits & 2) != 0};
    for (double step : {1.0, 5.0}) {
      const double lr = 1e-2, beta1 = 0.9, beta2 = 0.999;
      const auto c = math::make_sparse_adam_coeffs<T>(
          lr, beta1, beta2, 1e-8, f.weight_decay ? 0.1 : 0.0,
          math::sparse_adam_step_size(lr, beta1, beta2, step));
      for (int64_t width : kWidths) {
        for (int64_t hot : {int64_t(0), int64_t(300)}) {
          if (hot && width > 9) continue;
          const SparseRows r = sparse_rows(12, 30, hot);
          const int64_t nnz = static_cast<int64_t>(r.index.size());
          const int64_t stride = width + 3;  // rows of a wider tensor (a column slice)
          std::vector<S> p = values<S>(r.num_rows * stride, -1, 1),
                         m = values<S>(r.num_rows * stride, -0.1, 0.1),
                         v = values<S>(r.num_rows * stride, 0, 0.01),
                         vals = values<S>(nnz * width, -2, 2);
          add_specials_one<S>({&p, &m, &v, &vals});
          std::vector<S> p2 = p, m2 = m, v2 = v;
          std::vector<T> scratch(2 * width);
          const int64_t u = static_cast<int64_t>(r.rows.size());
          for (auto split : row_splits(u)) {
            for (int side = 0; side < 2; ++side) {
              const SparseAdamPtrs a{side ? p2.data() : p.data(), side ? m2.data() : m.data(),
                                     side ? v2.data() : v.data(), stride, stride, stride,
                                     vals.data(), width, r.rows.data(), r.offsets.data(),
                                     r.order.data()};
              pick<S>((side ? neon_table() : scalar_table()).sparse_adam)(
                  a, split.first, split.second, c, f, scratch.data());
            }
          }
          const std::string what =
              "sparse_adam[" +
              flags_text({{"maximize", f.maximize}, {"weight_decay", f.weight_decay}}) +
              " width=" + std::to_string(width) + " nnz=" + std::to_string(nnz) + "]";
          ++g_cases;
          same(p2, p, what + " param") && same(m2, m, what + " exp_avg") &&
              same(v2, v, what + " exp_avg_sq");
        }
      }
    }
  }
}

// ---- Adagrad with sparse grads, row-wise Adagrad (cpu/adagrad_rows_impl.h) --------------------
template <class S>
void sparse_adagrad_cases() {
  using T = opmath_t<S>;
  const auto c = math::make_sparse_adagrad_coeffs<T>(1e-2, 0.1, 1e-10, 3.0);
  for (int bits = 0; bits < 4; ++bits) {
    const bool maximize = (bits & 1) != 0, plain = (bits & 2) != 0;
    for (int64_t width : kWidths) {
      for (int64_t hot : {int64_t(0), int64_t(300)}) {
        if (hot && width > 9) continue;
        const SparseRows r = sparse_rows(12, 30, hot);
        const int64_t nnz = static_cast<int64_t>(r.index.size());
        const int64_t stride = width + 3;  // rows of a wider tensor (a column slice)
        std::vector<S> p = values<S>(r.num_rows * stride, -1, 1),
                       s = values<S>(r.num_rows * stride, 0, 0.1),
                       vals = values<S>(nnz * width, -2, 2);
        add_specials_one<S>({&p, &s, &vals});
        std::vector<S> p2 = p, s2 = s;
        std::vector<T> scratch(2 * width);
        const int64_t u = static_cast<int64_t>(r.rows.size());
        for (auto split : row_splits(u)) {
          for (int side = 0; side < 2; ++side) {
            const AdagradRowsPtrs a{side ? p2.data() : p.data(), side ? s2.data() : s.data(),
                                    stride, stride, vals.data(), width, r.rows.data(),
                                    r.offsets.data(), r.order.data()};
            pick<S>((side ? neon_table() : scalar_table()).sparse_adagrad)(
                a, split.first, split.second, c, maximize, plain, scratch.data());
          }
        }
        const std::string what =
            "sparse_adagrad[" + flags_text({{"maximize", maximize}, {"plain_update", plain}}) +
            " width=" + std::to_string(width) + " nnz=" + std::to_string(nnz) + "]";
        ++g_cases;
        same(p2, p, what + " param") && same(s2, s, what + " sum");
      }
    }
  }
}

template <class S>
void rowwise_adagrad_cases() {
  using T = opmath_t<S>;
  for (int bits = 0; bits < 6; ++bits) {
    const RowwiseAdagradFlags f{(bits & 1) != 0, static_cast<math::RowwiseDecay>(bits >> 1)};
    const auto c = math::make_rowwise_adagrad_coeffs<T>(
        1e-2, 0.1, 1e-10, f.decay == math::RowwiseDecay::kNone ? 0.0 : 0.1, 3.0);
    for (int64_t width : {int64_t(1), int64_t(7), int64_t(31), int64_t(32), int64_t(33),
                          int64_t(64), int64_t(100), int64_t(129)}) {
      for (int kind = 0; kind < 3; ++kind) {  // dense, sparse, sparse with a hot row
        if (kind == 2 && width > 33) continue;
        const SparseRows r = sparse_rows(12, 30, kind == 2 ? 300 : 0);
        const bool dense = kind == 0;
        const int64_t nnz = dense ? r.num_rows : static_cast<int64_t>(r.index.size());
        const int64_t stride = width + 3;
        std::vector<S> p = values<S>(r.num_rows * stride, -1, 1),
                       vals = values<S>(nnz * width, -2, 2);
        std::vector<T> sum = values<T>(r.num_rows, 0, 0.1);
        add_specials_one<S>({&p, &vals});
        std::vector<S> p2 = p;
        std::vector<T> sum2 = sum, scratch(2 * width);
        const int64_t u = dense ? r.num_rows : static_cast<int64_t>(r.rows.size());
        for (auto split : row_splits(u)) {
          for (int side = 0; side < 2; ++side) {
            const AdagradRowsPtrs a{side ? p2.data() : p.data(),
                                    side ? sum2.data() : sum.data(),
                                    stride,
                                    1,
                                    vals.data(),
                                    width,
                                    dense ? nullptr : r.rows.data(),
                                    dense ? nullptr : r.offsets.data(),
                                    dense ? nullptr : r.order.data()};
            pick<S>((side ? neon_table() : scalar_table()).rowwise_adagrad)(
                a, split.first, split.second, c, f, scratch.data());
          }
        }
        const std::string what =
            "rowwise_adagrad[" + flags_text({{"maximize", f.maximize}}) +
            " decay=" + std::to_string(bits >> 1) + " width=" + std::to_string(width) +
            (dense ? " dense" : " nnz=" + std::to_string(nnz)) + "]";
        ++g_cases;
        same(p2, p, what + " param") && same(sum2, sum, what + " sum");
      }
    }
  }
}

// ---- every dense optimizer (Note [Dense optimizers]) --------------------------------------------
// Hyper-parameters from each one's own checks: a unit-interval one 0.9 or 0.3, a non-negative
// one (lr, eps, weight decay, ...) 1e-2, and weight_decay 0 in the `zeros` variant.
template <class Opt>
std::vector<double> dense_hyper(bool alt, bool zeros) {
  std::vector<double> h;
  for (int i = 0; i < Opt::kHypers; ++i) {
    if (Opt::kChecks[i].kind == math::HyperCheck::kUnitInterval) {
      h.push_back(alt ? 0.3 : 0.9);
    } else {
      h.push_back(zeros && std::strcmp(Opt::kChecks[i].name, "weight_decay") == 0 ? 0.0 : 1e-2);
    }
  }
  return h;
}

template <class Opt, class S>
void dense_cases() {
  using T = opmath_t<S>;
  constexpr int N = Opt::kStates;
  for (unsigned mask = 0; mask < (1u << Opt::kFlags); ++mask) {
    for (bool scale : {false, true}) {
      for (int variant = 0; variant < 4; ++variant) {
        const std::vector<double> hyper = dense_hyper<Opt>(variant & 1, variant & 2);
        const DenseArgs<Opt, T> args{Opt::template coeffs<T>(hyper.data(), 3.0),
                                     math::saturate<T>(scale ? 1024.0 : 1.0)};
        for (int64_t n : kSizes) {
          for (int64_t begin : kBegins) {
            if (begin > n) continue;
            std::vector<S> p = values<S>(n, -1, 1), g = values<S>(n, -2, 2);
            std::vector<std::vector<S>> s, s2;
            for (int k = 0; k < N; ++k) s.push_back(values<S>(n, k == 0 ? -0.1 : 0.0, 0.1));
            std::vector<std::vector<S>*> arrays{&p, &g};
            for (auto& state : s) arrays.push_back(&state);
            add_specials<S>(arrays);
            std::vector<S> p2 = p;
            s2 = s;
            DensePtrs a{p.data(), g.data(), {}}, a2{p2.data(), g.data(), {}};
            for (int k = 0; k < N; ++k) {
              a.state[k] = s[k].data();
              a2.state[k] = s2[k].data();
            }
            pick<S>(scalar_table().dense[dense_index<Opt>()])(a, begin, n, &args, mask, scale);
            pick<S>(neon_table().dense[dense_index<Opt>()])(a2, begin, n, &args, mask, scale);
            const std::string what = std::string(Opt::kName) + "[flags=" + std::to_string(mask) +
                                     (scale ? " grad_scale" : "") +
                                     " hyper=" + std::to_string(variant) +
                                     " n=" + std::to_string(n) +
                                     " begin=" + std::to_string(begin) + "]";
            ++g_cases;
            bool ok = same(p2, p, what + " param");
            for (int k = 0; ok && k < N; ++k) {
              ok = same(s2[k], s[k], what + " state " + std::to_string(k));
            }
          }
        }
      }
    }
  }
}

// ---- Adam's mixed-precision modes (Note [Master weights and stochastic rounding]) ---------------
// Master weights (bfloat16 / float16 params, float32 master and moments), and stochastic
// rounding of bfloat16 params (random bits keyed by seed, step and element index: the ranges
// start at 0 and 3, so the vector body and the tail see every lane offset).
template <class P>
void adam_master_cases() {
  for (int bits = 0; bits < 16; ++bits) {
    const AdamFlags f{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0, false};
    for (double wd : {0.0, 0.1}) {
      const auto c = math::make_adam_coeffs<float>(1e-2, 0.9, 0.999, 1e-8, wd, f.decoupled, 3.0,
                                                   f.scale ? 1024.0 : 1.0);
      for (int64_t n : kSizes) {
        for (int64_t begin : kBegins) {
          if (begin > n) continue;
          std::vector<P> p = values<P>(n, -1, 1), g = values<P>(n, -2, 2);
          std::vector<float> w = values<float>(n, -1, 1), m = values<float>(n, -0.1, 0.1),
                             v = values<float>(n, 0, 0.01), x = values<float>(n, 0, 0.02);
          add_specials<float>({&w, &m, &v, &x});
          std::vector<P> p2 = p;
          std::vector<float> w2 = w, m2 = m, v2 = v, x2 = x;
          const auto fn = [](const KernelTable& t) {
            return std::is_same<P, bf16>::value ? t.adam.bf16_master : t.adam.f16_master;
          };
          fn(scalar_table())(AdamPtrs{p.data(), g.data(), m.data(), v.data(), x.data(), w.data(),
                                      0, 0},
                             begin, n, c, f);
          fn(neon_table())(AdamPtrs{p2.data(), g.data(), m2.data(), v2.data(), x2.data(),
                                    w2.data(), 0, 0},
                           begin, n, c, f);
          const std::string what = "adam_master[" +
                                   flags_text({{"adamw", f.decoupled}, {"amsgrad", f.amsgrad},
                                               {"maximize", f.maximize}, {"grad_scale", f.scale}}) +
                                   " n=" + std::to_string(n) + " begin=" + std::to_string(begin) +
                                   "]";
          ++g_cases;
          same(p2, p, what + " param") && same(w2, w, what + " master") &&
              same(m2, m, what + " exp_avg") && same(v2, v, what + " exp_avg_sq") &&
              same(x2, x, what + " max_exp_avg_sq");
        }
      }
    }
  }
}

template <class P>
void sgd_master_cases() {
  for (int bits = 0; bits < 32; ++bits) {
    const SgdFlags f = sgd_flags(bits);
    if (!f.momentum) continue;  // master weights are for SGD with momentum
    for (double wd : {0.0, 1e-2}) {
      const auto c = math::make_sgd_coeffs<float>(1e-2, 0.9, 0.1, wd, f.scale ? 1024.0 : 1.0);
      for (int64_t n : kSizes) {
        for (int64_t begin : kBegins) {
          if (begin > n) continue;
          std::vector<P> p = values<P>(n, -1, 1), g = values<P>(n, -2, 2);
          std::vector<float> w = values<float>(n, -1, 1), b = values<float>(n, -0.5, 0.5);
          add_specials<float>({&w, &b});
          std::vector<P> p2 = p;
          std::vector<float> w2 = w, b2 = b;
          const auto fn = [](const KernelTable& t) {
            return std::is_same<P, bf16>::value ? t.sgd.dense.bf16_master
                                                : t.sgd.dense.f16_master;
          };
          fn(scalar_table())(SgdPtrs{p.data(), g.data(), b.data(), w.data()}, begin, n, c, f);
          fn(neon_table())(SgdPtrs{p2.data(), g.data(), b2.data(), w2.data()}, begin, n, c, f);
          const std::string what = "sgd_master[" + sgd_text(f) + " wd=" + std::to_string(wd) +
                                   " n=" + std::to_string(n) +
                                   " begin=" + std::to_string(begin) + "]";
          ++g_cases;
          same(p2, p, what + " param") && same(w2, w, what + " master") &&
              same(b2, b, what + " momentum_buffer");
        }
      }
    }
  }
}

void adam_sr_cases() {
  for (int bits = 0; bits < 16; ++bits) {
    const AdamFlags f{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0, true};
    for (uint64_t seed : {uint64_t(0), uint64_t(0x9E3779B97F4A7C15ull)}) {
      const auto c = math::make_adam_coeffs<float>(1e-2, 0.9, 0.999, 1e-8, 0.1, f.decoupled, 5.0,
                                                   f.scale ? 1024.0 : 1.0);
      for (int64_t n : kSizes) {
        for (int64_t begin : kBegins) {
          if (begin > n) continue;
          std::vector<bf16> p = values<bf16>(n, -1, 1), g = values<bf16>(n, -2, 2),
                            m = values<bf16>(n, -0.1, 0.1), v = values<bf16>(n, 0, 0.01),
                            x = values<bf16>(n, 0, 0.02);
          add_specials<bf16>({&p, &g, &m, &v, &x});
          std::vector<bf16> p2 = p, m2 = m, v2 = v, x2 = x;
          scalar_table().adam.bf16(
              AdamPtrs{p.data(), g.data(), m.data(), v.data(), x.data(), nullptr, seed, 5},
              begin, n, c, f);
          neon_table().adam.bf16(
              AdamPtrs{p2.data(), g.data(), m2.data(), v2.data(), x2.data(), nullptr, seed, 5},
              begin, n, c, f);
          const std::string what = "adam_sr[" +
                                   flags_text({{"adamw", f.decoupled}, {"amsgrad", f.amsgrad},
                                               {"maximize", f.maximize}, {"grad_scale", f.scale}}) +
                                   " n=" + std::to_string(n) + " begin=" + std::to_string(begin) +
                                   "]";
          ++g_cases;
          same(p2, p, what + " param") && same(m2, m, what + " exp_avg") &&
              same(v2, v, what + " exp_avg_sq") && same(x2, x, what + " max_exp_avg_sq");
        }
      }
    }
  }
}

// ---- reduced-precision states (Note [Reduced-precision optimizer states]) ----------------------
// float32 params with bfloat16 moments, or with 8-bit codes and block scales (ranges start at a
// block boundary: 0, or 256).
std::vector<float> as_floats(const std::vector<int8_t>& c) { return {c.begin(), c.end()}; }
std::vector<float> as_floats(const std::vector<uint8_t>& c) { return {c.begin(), c.end()}; }

void adam_states_cases(StateFormat states) {
  const bool q8 = states == StateFormat::kQ8;
  for (int bits = 0; bits < 8; ++bits) {  // amsgrad is not a mode of reduced states
    const AdamFlags f{(bits & 1) != 0, false, (bits & 2) != 0, (bits & 4) != 0, false, states};
    for (uint64_t seed : {uint64_t(0), uint64_t(0x9E3779B97F4A7C15ull)}) {
      const auto c = math::make_adam_coeffs<float>(1e-2, 0.9, 0.999, 1e-8, 0.1, f.decoupled, 5.0,
                                                   f.scale ? 1024.0 : 1.0);
      for (int64_t n : {1, 3, 4, 15, 16, 17, 255, 256, 257, 300, 515, 700}) {
        for (int64_t begin : {int64_t(0), q8 ? int64_t(256) : int64_t(3)}) {
          if (begin > n) continue;
          std::vector<float> p = values<float>(n, -1, 1), g = values<float>(n, -2, 2);
          add_specials<float>({&p, &g});
          std::vector<float> p2 = p;
          const std::string what = std::string(q8 ? "adam_8bit[" : "adam_bf16state[") +
                                   flags_text({{"adamw", f.decoupled}, {"maximize", f.maximize},
                                               {"grad_scale", f.scale}}) +
                                   " n=" + std::to_string(n) + " begin=" + std::to_string(begin) +
                                   "]";
          ++g_cases;
          if (!q8) {
            std::vector<bf16> m = values<bf16>(n, -0.1, 0.1), v = values<bf16>(n, 0, 0.01);
            std::vector<bf16> m2 = m, v2 = v;
            scalar_table().adam.f32(AdamPtrs{p.data(), g.data(), m.data(), v.data(), nullptr,
                                             nullptr, seed, 5, nullptr, nullptr},
                                    begin, n, c, f);
            neon_table().adam.f32(AdamPtrs{p2.data(), g.data(), m2.data(), v2.data(), nullptr,
                                           nullptr, seed, 5, nullptr, nullptr},
                                  begin, n, c, f);
            same(p2, p, what + " param") && same(m2, m, what + " exp_avg") &&
                same(v2, v, what + " exp_avg_sq");
            continue;
          }
          const size_t blocks = static_cast<size_t>((n + 255) / 256);
          std::vector<int8_t> m(static_cast<size_t>(n));
          std::vector<uint8_t> v(static_cast<size_t>(n));
          for (auto& x : m) x = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
          for (auto& x : v) x = static_cast<uint8_t>(rng() % 256);
          std::vector<float> ms = values<float>(static_cast<int64_t>(blocks), 1e-4, 1e-2),
                             vs = values<float>(static_cast<int64_t>(blocks), 1e-5, 1e-3);
          for (auto& x : ms) x = std::fabs(x);
          for (auto& x : vs) x = std::fabs(x);
          std::vector<int8_t> m2 = m;
          std::vector<uint8_t> v2 = v;
          std::vector<float> ms2 = ms, vs2 = vs;
          scalar_table().adam.f32(AdamPtrs{p.data(), g.data(), m.data(), v.data(), nullptr,
                                           nullptr, seed, 5, ms.data(), vs.data()},
                                  begin, n, c, f);
          neon_table().adam.f32(AdamPtrs{p2.data(), g.data(), m2.data(), v2.data(), nullptr,
                                         nullptr, seed, 5, ms2.data(), vs2.data()},
                                begin, n, c, f);
          same(p2, p, what + " param") && same(as_floats(m2), as_floats(m), what + " exp_avg") &&
              same(as_floats(v2), as_floats(v), what + " exp_avg_sq") &&
              same(ms2, ms, what + " exp_avg_scale") && same(vs2, vs, what + " exp_avg_sq_scale");
        }
      }
    }
  }
}

// SGD with momentum: bfloat16 params rounded stochastically, or float32 params with a bfloat16 /
// 8-bit momentum buffer.
void sgd_modes_cases() {
  for (int mode = 0; mode < 3; ++mode) {
    for (int bits = 0; bits < 32; ++bits) {
      SgdFlags f = sgd_flags(bits);
      if (!f.momentum) continue;
      f.stochastic_round = mode == 0;
      f.states = mode == 1   ? StateFormat::kBf16
                 : mode == 2 ? StateFormat::kQ8
                             : StateFormat::kParam;
      const auto c = math::make_sgd_coeffs<float>(1e-2, 0.9, 0.1, 1e-2, f.scale ? 1024.0 : 1.0);
      for (int64_t n : {1, 4, 15, 16, 17, 255, 256, 257, 515}) {
        for (int64_t begin : {int64_t(0), mode == 2 ? int64_t(256) : int64_t(3)}) {
          if (begin > n) continue;
          const std::string what = std::string(mode == 0 ? "sgd_sr[" : mode == 1
                                                                      ? "sgd_bf16buf["
                                                                      : "sgd_8bitbuf[") +
                                   sgd_text(f) + " n=" + std::to_string(n) +
                                   " begin=" + std::to_string(begin) + "]";
          ++g_cases;
          const uint64_t seed = 0x1234567ull + static_cast<uint64_t>(bits);
          if (mode == 0) {
            std::vector<bf16> p = values<bf16>(n, -1, 1), g = values<bf16>(n, -2, 2),
                              b = values<bf16>(n, -0.5, 0.5);
            add_specials<bf16>({&p, &g, &b});
            std::vector<bf16> p2 = p, b2 = b;
            scalar_table().sgd.dense.bf16(SgdPtrs{p.data(), g.data(), b.data(), nullptr, seed,
                                                  nullptr},
                                          begin, n, c, f);
            neon_table().sgd.dense.bf16(SgdPtrs{p2.data(), g.data(), b2.data(), nullptr, seed,
                                                nullptr},
                                        begin, n, c, f);
            same(p2, p, what + " param") && same(b2, b, what + " momentum_buffer");
            continue;
          }
          std::vector<float> p = values<float>(n, -1, 1), g = values<float>(n, -2, 2);
          add_specials<float>({&p, &g});
          std::vector<float> p2 = p;
          if (mode == 1) {
            std::vector<bf16> b = values<bf16>(n, -0.5, 0.5), b2 = b;
            scalar_table().sgd.dense.f32(SgdPtrs{p.data(), g.data(), b.data(), nullptr, seed,
                                                 nullptr},
                                         begin, n, c, f);
            neon_table().sgd.dense.f32(SgdPtrs{p2.data(), g.data(), b2.data(), nullptr, seed,
                                               nullptr},
                                       begin, n, c, f);
            same(p2, p, what + " param") && same(b2, b, what + " momentum_buffer");
            continue;
          }
          std::vector<int8_t> b(static_cast<size_t>(n));
          for (auto& x : b) x = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
          std::vector<float> sc = values<float>((n + 255) / 256, 1e-4, 1e-2);
          for (auto& x : sc) x = std::fabs(x);
          std::vector<int8_t> b2 = b;
          std::vector<float> sc2 = sc;
          scalar_table().sgd.dense.f32(SgdPtrs{p.data(), g.data(), b.data(), nullptr, seed,
                                               sc.data()},
                                       begin, n, c, f);
          neon_table().sgd.dense.f32(SgdPtrs{p2.data(), g.data(), b2.data(), nullptr, seed,
                                             sc2.data()},
                                     begin, n, c, f);
          same(p2, p, what + " param") &&
              same(as_floats(b2), as_floats(b), what + " momentum_buffer") &&
              same(sc2, sc, what + " momentum_buffer_scale");
        }
      }
    }
  }
}

// Adam on 16-bit params with a Kahan compensation.
template <class P>
void adam_kahan_cases() {
  for (int bits = 0; bits < 16; ++bits) {
    AdamFlags f{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0, false,
                StateFormat::kParam};
    f.kahan = true;
    const auto c = math::make_adam_coeffs<float>(1e-2, 0.9, 0.999, 1e-8, 0.1, f.decoupled, 5.0,
                                                 f.scale ? 1024.0 : 1.0);
    for (int64_t n : kSizes) {
      for (int64_t begin : kBegins) {
        if (begin > n) continue;
        std::vector<P> p = values<P>(n, -1, 1), g = values<P>(n, -2, 2),
                       m = values<P>(n, -0.1, 0.1), v = values<P>(n, 0, 0.01),
                       x = values<P>(n, 0, 0.02), k = values<P>(n, -1e-3, 1e-3);
        add_specials<P>({&p, &g, &m, &v, &x, &k});
        std::vector<P> p2 = p, m2 = m, v2 = v, x2 = x, k2 = k;
        pick<P>(scalar_table().adam)(AdamPtrs{p.data(), g.data(), m.data(), v.data(), x.data(),
                                              nullptr, 0, 0, nullptr, nullptr, k.data()},
                                     begin, n, c, f);
        pick<P>(neon_table().adam)(AdamPtrs{p2.data(), g.data(), m2.data(), v2.data(), x2.data(),
                                            nullptr, 0, 0, nullptr, nullptr, k2.data()},
                                   begin, n, c, f);
        const std::string what = "adam_kahan[" +
                                 flags_text({{"adamw", f.decoupled}, {"amsgrad", f.amsgrad},
                                             {"maximize", f.maximize}, {"grad_scale", f.scale}}) +
                                 " n=" + std::to_string(n) + " begin=" + std::to_string(begin) +
                                 "]";
        ++g_cases;
        same(p2, p, what + " param") && same(k2, k, what + " kahan_comp") &&
            same(m2, m, what + " exp_avg") && same(v2, v, what + " exp_avg_sq") &&
            same(x2, x, what + " max_exp_avg_sq");
      }
    }
  }
}

// SGD on 16-bit params with a Kahan compensation, with and without momentum.
template <class P>
void sgd_kahan_cases() {
  for (int bits = 0; bits < 32; ++bits) {
    SgdFlags f = sgd_flags(bits);
    if (!f.momentum && (f.nesterov || f.first_step)) continue;  // unused without momentum
    f.kahan = true;
    for (double wd : {0.0, 1e-2}) {
      const auto c = math::make_sgd_coeffs<float>(1e-2, 0.9, 0.1, wd, f.scale ? 1024.0 : 1.0);
      for (int64_t n : kSizes) {
        for (int64_t begin : kBegins) {
          if (begin > n) continue;
          std::vector<P> p = values<P>(n, -1, 1), g = values<P>(n, -2, 2),
                         b = values<P>(n, -0.5, 0.5), k = values<P>(n, -1e-3, 1e-3);
          add_specials<P>({&p, &g, &b, &k});
          std::vector<P> p2 = p, b2 = b, k2 = k;
          pick<P>(scalar_table().sgd.dense)(
              SgdPtrs{p.data(), g.data(), b.data(), nullptr, 0, nullptr, k.data()}, begin, n, c,
              f);
          pick<P>(neon_table().sgd.dense)(
              SgdPtrs{p2.data(), g.data(), b2.data(), nullptr, 0, nullptr, k2.data()}, begin, n,
              c, f);
          const std::string what = "sgd_kahan[" + sgd_text(f) + " wd=" + std::to_string(wd) +
                                   " n=" + std::to_string(n) +
                                   " begin=" + std::to_string(begin) + "]";
          ++g_cases;
          same(p2, p, what + " param") && same(k2, k, what + " kahan_comp") &&
              same(b2, b, what + " momentum_buffer");
        }
      }
    }
  }
}

// The whole-tensor conversions (quantize_8bit / dequantize_8bit's kernels).
void q8_conversion_cases() {
  for (bool sqrt_map : {false, true}) {
    for (int64_t n : {0, 1, 17, 256, 257, 700}) {
      std::vector<float> x = values<float>(n, sqrt_map ? 0 : -0.1, 0.1);
      add_specials_one<float>({&x});
      const size_t blocks = static_cast<size_t>((n + 255) / 256);
      std::vector<uint8_t> c(static_cast<size_t>(n)), c2 = c;
      std::vector<float> s(blocks), s2(blocks), y(static_cast<size_t>(n)), y2 = y;
      scalar_table().adam.q8_encode(x.data(), n, c.data(), s.data(), sqrt_map);
      neon_table().adam.q8_encode(x.data(), n, c2.data(), s2.data(), sqrt_map);
      scalar_table().adam.q8_decode(c.data(), s.data(), n, y.data(), sqrt_map);
      neon_table().adam.q8_decode(c.data(), s.data(), n, y2.data(), sqrt_map);
      const std::string what = std::string("q8_") + (sqrt_map ? "sqrt" : "signed") +
                               "[n=" + std::to_string(n) + "]";
      ++g_cases;
      same(as_floats(c2), as_floats(c), what + " codes") && same(s2, s, what + " scales") &&
          same(y2, y, what + " decoded");
    }
  }
}

// ---- driver -------------------------------------------------------------------------------------
template <class F>
void section(const char* name, const char* dtype, F&& run) {
  const int64_t cases = g_cases, elements = g_elements, failures = g_failures;
  run();
  std::printf("  %-12s %-9s %6" PRId64 " cases %9" PRId64 " elements  %s\n", name, dtype,
              g_cases - cases, g_elements - elements,
              g_failures == failures ? "bitwise equal" : "DIFFERENT");
}

template <class S>
void all_kernels() {
  section("adam", dtype_name<S>(), [] { adam_cases<S>(); });
  section("sgd", dtype_name<S>(), [] { sgd_dense_cases<S>(); });
  section("sgd_sparse", dtype_name<S>(), [] { sgd_sparse_cases<S>(); });
  section("sparse_adam", dtype_name<S>(), [] { sparse_adam_cases<S>(); });
  section("sparse_adagrad", dtype_name<S>(), [] { sparse_adagrad_cases<S>(); });
  section("rowwise_adagrad", dtype_name<S>(), [] { rowwise_adagrad_cases<S>(); });
  for_each_dense([](auto opt) {
    using Opt = decltype(opt);
    section(Opt::kName, dtype_name<S>(), [] { dense_cases<Opt, S>(); });
  });
}

bool check(bool ok, const char* what) {
  std::printf("  %-60s %s\n", what, ok ? "ok" : "FAILED");
  if (!ok) ++g_failures;
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strncmp(argv[1], "--dispatch=", 11) == 0) {
    const char* want = argv[1] + 11;
    const char* got = isa_name(current_isa());
    std::printf("current_isa() = %s (PYOPTIM_CPU_CAPABILITY=%s), expected %s\n", got,
                std::getenv("PYOPTIM_CPU_CAPABILITY") ? std::getenv("PYOPTIM_CPU_CAPABILITY") : "",
                want);
    return std::strcmp(got, want) == 0 ? 0 : 1;
  }
  std::printf("neon vs scalar kernel tables, bit for bit:\n");
  all_kernels<float>();
  all_kernels<double>();
  all_kernels<bf16>();
  all_kernels<fp16>();
  section("adam_master", "bfloat16", [] { adam_master_cases<bf16>(); });
  section("adam_master", "float16", [] { adam_master_cases<fp16>(); });
  section("adam_sr", "bfloat16", [] { adam_sr_cases(); });
  section("adam_states", "bfloat16", [] { adam_states_cases(StateFormat::kBf16); });
  section("adam_states", "8bit", [] { adam_states_cases(StateFormat::kQ8); });
  section("q8_convert", "8bit", [] { q8_conversion_cases(); });
  section("sgd_modes", "mixed", [] { sgd_modes_cases(); });
  section("adam_kahan", "bfloat16", [] { adam_kahan_cases<bf16>(); });
  section("adam_kahan", "float16", [] { adam_kahan_cases<fp16>(); });
  section("sgd_kahan", "bfloat16", [] { sgd_kahan_cases<bf16>(); });
  section("sgd_kahan", "float16", [] { sgd_kahan_cases<fp16>(); });
  section("sgd_master", "bfloat16", [] { sgd_master_cases<bf16>(); });
  section("sgd_master", "float16", [] { sgd_master_cases<fp16>(); });
  std::printf("dispatch:\n");
  check(scalar_table().isa == CpuIsa::kScalar && neon_table().isa == CpuIsa::kNeon,
        "each table names its level");
  check(max_supported_isa() == CpuIsa::kNeon, "max_supported_isa() is neon");
  check(is_built_isa(CpuIsa::kNeon) && !is_built_isa(CpuIsa::kAvx2) &&
            !is_built_isa(CpuIsa::kAvx512),
        "this build's levels are scalar and neon");
  check(std::strcmp(built_isa_names(), "scalar or neon") == 0, "built_isa_names()");
  check(!set_current_isa(CpuIsa::kAvx2) && !set_current_isa(CpuIsa::kAvx512),
        "set_current_isa refuses the x86 levels");
  check(set_current_isa(CpuIsa::kScalar) && &current_kernels() == &scalar_table(),
        "set_current_isa(scalar) runs the scalar table");
  check(set_current_isa(CpuIsa::kNeon) && &current_kernels() == &neon_table(),
        "set_current_isa(neon) runs the neon table");
  std::printf("%" PRId64 " cases, %" PRId64 " elements compared: %s (%" PRId64
              " NaN results equal up to their sign)\n",
              g_cases, g_elements, g_failures == 0 ? "all bitwise equal" : "FAILURES",
              g_nan_signs);
  return g_failures == 0 ? 0 : 1;
}
