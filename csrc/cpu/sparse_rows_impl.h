// Summing a sparse gradient's duplicate rows, for one ISA level. Included by cpu/kernels_impl.h
// inside namespace pyoptim::cpu::<isa>. See Note [Sparse rows: one deterministic pass] in
// ops/sparse_rows.h and Note [Blocked duplicate sums] in math/duplicate_sum.h: the order of the
// sum is fixed by `order`, never by the thread count.

// The one prefetch of the sparse kernels: the `width` elements at `row` (every line, of
// stream_prefetch_impl.h's kLineBytes, of its first 2 KiB: a wider row is a sequential stream the
// hardware prefetcher follows), for reading, or for writing (kWrite: a param or state row, read
// and then overwritten).
template <bool kWrite = false, class S>
PYOPTIM_INLINE void prefetch_row(const S* row, int64_t width) {
  const char* b = reinterpret_cast<const char*>(row);
  const int64_t row_bytes = width * static_cast<int64_t>(sizeof(S));
  const int64_t bytes = row_bytes < 2048 ? row_bytes : 2048;
  for (int64_t o = 0; o < bytes; o += kLineBytes) __builtin_prefetch(b + o, kWrite ? 1 : 0, 3);
}

// Value rows of one sum prefetched ahead of the one being added: duplicates sit at random
// positions of `values`, so each is a cache miss otherwise.
constexpr int64_t kDuplicatePrefetchRows = 4;

// acc[j] = values[order[k0]][j] + ... + values[order[k1 - 1]][j], summed left to right in
// opmath_t<S>. Rows are walked one after another (k outer) so each value row is read once,
// contiguously, while `acc` stays in L1; rows up to `k_end` are prefetched ahead.
template <class S>
void sum_value_rows(const S* values, int64_t width, const int64_t* order, int64_t k0, int64_t k1,
                    int64_t k_end, opmath_t<S>* acc) {
  using V = typename VecOf<S>::type;
  constexpr int64_t W = VecOf<S>::kSize;
  const S* first = values + order[k0] * width;
  int64_t j = 0;
  for (; j + W <= width; j += W) vstore(acc + j, V(vload(first + j)));
  for (; j < width; ++j) acc[j] = to_opmath(first[j]);
  for (int64_t k = k0 + 1; k < k1; ++k) {
    if (k + kDuplicatePrefetchRows < k_end) {
      prefetch_row(values + order[k + kDuplicatePrefetchRows] * width, width);
    }
    const S* row = values + order[k] * width;
    j = 0;
    for (; j + W <= width; j += W) vstore(acc + j, V(vload(acc + j)) + V(vload(row + j)));
    for (; j < width; ++j) acc[j] = acc[j] + to_opmath(row[j]);
  }
}

// out[j] = values[order[k0]][j] + ... + values[order[k1 - 1]][j], in opmath_t<S>, in the
// blocked order of Note [Blocked duplicate sums] (math/duplicate_sum.h): each block of
// kDuplicateBlock positions summed left to right (into `out` for the first, `tmp` for the
// others), the block sums added to `out` left to right. `out` and `tmp` hold `width` elements.
template <class S>
void sum_duplicate_rows(const S* values, int64_t width, const int64_t* order, int64_t k0,
                        int64_t k1, opmath_t<S>* out, opmath_t<S>* tmp) {
  using V = typename VecOf<S>::type;
  constexpr int64_t W = VecOf<S>::kSize;
  for (int64_t b0 = k0; b0 < k1; b0 += math::kDuplicateBlock) {
    const int64_t b1 = k1 - b0 > math::kDuplicateBlock ? b0 + math::kDuplicateBlock : k1;
    opmath_t<S>* acc = b0 == k0 ? out : tmp;
    sum_value_rows<S>(values, width, order, b0, b1, k1, acc);
    if (acc == out) continue;
    int64_t j = 0;
    for (; j + W <= width; j += W) vstore(out + j, V(vload(out + j)) + V(vload(tmp + j)));
    for (; j < width; ++j) out[j] = out[j] + tmp[j];
  }
}
