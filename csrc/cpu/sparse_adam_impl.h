// SparseAdam loops for one ISA level. Included by cpu/kernels_impl.h inside namespace
// pyoptim::cpu::<isa>, after cpu/sparse_rows_impl.h.
//
// For each unique row u in [u_begin, u_end): the row's gradient is its single value row read
// directly, or its duplicates summed into `scratch` (sum_duplicate_rows, blocked position order);
// then param, exp_avg and exp_avg_sq of the row are each read once and written once, a vector
// body and a scalar tail both calling math::sparse_adam_step. Rows are independent and each is
// computed the same way whatever the thread split, so results never depend on it.

// How many rows ahead of the one being updated are prefetched: that row's param, state and
// first value row are in flight while this row computes (uniform lookups miss every cache).
constexpr int64_t kSparseAdamPrefetchRows = 4;

// One row: g_row is either a value row (G = S) or the summed scratch row (G = opmath_t<S>).
template <class S, bool kMaximize, bool kWeightDecay, class G>
PYOPTIM_INLINE void sparse_adam_row(S* __restrict__ p_row, S* __restrict__ m_row,
                                    S* __restrict__ v_row, const G* __restrict__ g_row,
                                    int64_t width,
                                    const math::SparseAdamCoeffs<opmath_t<S>> c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  int64_t j = 0;
  for (; j + W <= width; j += W) {
    V p = vload(p_row + j), m = vload(m_row + j), v = vload(v_row + j);
    math::sparse_adam_step<kMaximize, kWeightDecay>(p, V(vload(g_row + j)), m, v, c);
    vstore(p_row + j, p);
    vstore(m_row + j, m);
    vstore(v_row + j, v);
  }
  for (; j < width; ++j) {  // tail: the same math on single elements
    T p = to_opmath(p_row[j]), m = to_opmath(m_row[j]), v = to_opmath(v_row[j]);
    math::sparse_adam_step<kMaximize, kWeightDecay>(p, T(to_opmath(g_row[j])), m, v, c);
    p_row[j] = from_opmath<S>(p);
    m_row[j] = from_opmath<S>(m);
    v_row[j] = from_opmath<S>(v);
  }
}

template <class S, bool kMaximize, bool kWeightDecay>
void sparse_adam_loop(const SparseAdamPtrs& a, int64_t u_begin, int64_t u_end,
                      const math::SparseAdamCoeffs<opmath_t<S>> c, opmath_t<S>* scratch) {
  S* const param = static_cast<S*>(a.param);
  S* const exp_avg = static_cast<S*>(a.exp_avg);
  S* const exp_avg_sq = static_cast<S*>(a.exp_avg_sq);
  const S* const values = static_cast<const S*>(a.values);
  const int64_t width = a.width;
  for (int64_t u = u_begin; u < u_end; ++u) {
    const int64_t ahead = u + kSparseAdamPrefetchRows;
    if (ahead < u_end) {
      const int64_t r = a.rows[ahead];
      prefetch_row<true>(param + r * a.param_row_stride, width);
      prefetch_row<true>(exp_avg + r * a.exp_avg_row_stride, width);
      prefetch_row<true>(exp_avg_sq + r * a.exp_avg_sq_row_stride, width);
      prefetch_row(values + a.order[a.offsets[ahead]] * width, width);  // its first value row
    }
    const int64_t r = a.rows[u];
    S* p_row = param + r * a.param_row_stride;
    S* m_row = exp_avg + r * a.exp_avg_row_stride;
    S* v_row = exp_avg_sq + r * a.exp_avg_sq_row_stride;
    const int64_t k0 = a.offsets[u], k1 = a.offsets[u + 1];
    if (k1 - k0 == 1) {  // no duplicates: the value row is the coalesced gradient
      sparse_adam_row<S, kMaximize, kWeightDecay>(p_row, m_row, v_row,
                                                  values + a.order[k0] * width, width, c);
    } else {
      sum_duplicate_rows<S>(values, width, a.order, k0, k1, scratch, scratch + width);
      sparse_adam_row<S, kMaximize, kWeightDecay>(p_row, m_row, v_row,
                                                  static_cast<const opmath_t<S>*>(scratch),
                                                  width, c);
    }
  }
}

template <class S>
void sparse_adam_range(const SparseAdamPtrs& a, int64_t u_begin, int64_t u_end,
                       const math::SparseAdamCoeffs<opmath_t<S>>& c, SparseAdamFlags f,
                       opmath_t<S>* scratch) {
  PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
    PYOPTIM_BOOL_SWITCH(f.weight_decay, kWeightDecay, [&] {
      sparse_adam_loop<S, kMaximize, kWeightDecay>(a, u_begin, u_end, c, scratch);
    });
  });
}

inline SparseAdamKernels make_sparse_adam_kernels() {
  return SparseAdamKernels{&sparse_adam_range<float>, &sparse_adam_range<double>,
                           &sparse_adam_range<bf16>, &sparse_adam_range<fp16>};
}
