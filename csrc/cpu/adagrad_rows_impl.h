// Adagrad's sparse-gradient loops and row-wise Adagrad's loops, for one ISA level. Included by
// cpu/kernels_impl.h inside namespace pyoptim::cpu::<isa>, after cpu/sparse_rows_impl.h.
//
// Both walk the unique rows [u_begin, u_end) of one param as sparse_adam_impl.h does: the row's
// gradient is its single value row read directly, or its duplicates summed into `scratch`
// (sum_duplicate_rows, blocked position order); a dense gradient (rows == nullptr) gives every
// row its own value row. Rows are independent and each is computed the same way whatever the
// thread split, so results never depend on it.

// How many rows ahead of the one being updated are prefetched (see sparse_adam_impl.h).
constexpr int64_t kAdagradRowsPrefetchRows = 4;

// The gradient row of unique row u: a value row (G = S) or the summed scratch row (opmath).
// Calls fn(row, g_row) with the row index and a pointer of either type.
template <class S, class F>
PYOPTIM_INLINE void with_row_gradient(const AdagradRowsPtrs& a, int64_t u, opmath_t<S>* scratch,
                                      const F& fn) {
  const S* const values = static_cast<const S*>(a.values);
  const int64_t width = a.width;
  if (a.rows == nullptr) {  // dense: row u, its own gradient row
    fn(u, values + u * width);
    return;
  }
  const int64_t k0 = a.offsets[u], k1 = a.offsets[u + 1];
  if (k1 - k0 == 1) {  // no duplicates: the value row is the coalesced gradient
    fn(a.rows[u], values + a.order[k0] * width);
  } else {
    sum_duplicate_rows<S>(values, width, a.order, k0, k1, scratch, scratch + width);
    fn(a.rows[u], static_cast<const opmath_t<S>*>(scratch));
  }
}

// Prefetches the param row, the state row (row_state: sparse Adagrad's, shaped like the param;
// row-wise Adagrad's one element per row is not worth it) and the first gradient row of unique
// row `ahead`.
template <class S>
PYOPTIM_INLINE void prefetch_adagrad_row(const AdagradRowsPtrs& a, int64_t ahead,
                                         bool row_state) {
  const S* const values = static_cast<const S*>(a.values);
  const int64_t r = a.rows == nullptr ? ahead : a.rows[ahead];
  prefetch_row<true>(static_cast<S*>(a.param) + r * a.param_row_stride, a.width);
  if (row_state) {
    prefetch_row<true>(static_cast<S*>(a.state_sum) + r * a.state_row_stride, a.width);
  }
  const int64_t k = a.rows == nullptr ? ahead : a.order[a.offsets[ahead]];
  prefetch_row(values + k * a.width, a.width);
}

// ---- Adagrad, sparse gradients (Note [Sparse Adagrad] in math/adagrad.h) --------------------

template <class S, bool kMaximize, bool kPlain, class G>
PYOPTIM_INLINE void sparse_adagrad_row(S* __restrict__ p_row, S* __restrict__ s_row,
                                       const G* __restrict__ g_row, int64_t width,
                                       const math::SparseAdagradCoeffs<opmath_t<S>> c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  int64_t j = 0;
  for (; j + W <= width; j += W) {
    V p = vload(p_row + j), s = vload(s_row + j);
    math::sparse_adagrad_step<kMaximize, kPlain>(p, V(vload(g_row + j)), s, c);
    vstore(p_row + j, p);
    vstore(s_row + j, s);
  }
  for (; j < width; ++j) {  // tail: the same math on single elements
    T p = to_opmath(p_row[j]), s = to_opmath(s_row[j]);
    math::sparse_adagrad_step<kMaximize, kPlain>(p, T(to_opmath(g_row[j])), s, c);
    p_row[j] = from_opmath<S>(p);
    s_row[j] = from_opmath<S>(s);
  }
}

template <class S, bool kMaximize, bool kPlain>
void sparse_adagrad_loop(const AdagradRowsPtrs& a, int64_t u_begin, int64_t u_end,
                         const math::SparseAdagradCoeffs<opmath_t<S>> c,
                         opmath_t<S>* scratch) {
  S* const param = static_cast<S*>(a.param);
  S* const sum = static_cast<S*>(a.state_sum);
  for (int64_t u = u_begin; u < u_end; ++u) {
    if (u + kAdagradRowsPrefetchRows < u_end) {
      prefetch_adagrad_row<S>(a, u + kAdagradRowsPrefetchRows, /*row_state=*/true);
    }
    with_row_gradient<S>(a, u, scratch, [&](int64_t r, const auto* g_row) {
      sparse_adagrad_row<S, kMaximize, kPlain>(param + r * a.param_row_stride,
                                               sum + r * a.state_row_stride, g_row, a.width, c);
    });
  }
}

template <class S>
void sparse_adagrad_range(const AdagradRowsPtrs& a, int64_t u_begin, int64_t u_end,
                          const math::SparseAdagradCoeffs<opmath_t<S>>& c, bool maximize,
                          bool plain_update, opmath_t<S>* scratch) {
  PYOPTIM_BOOL_SWITCH(maximize, kMaximize, [&] {
    PYOPTIM_BOOL_SWITCH(plain_update, kPlain, [&] {
      sparse_adagrad_loop<S, kMaximize, kPlain>(a, u_begin, u_end, c, scratch);
    });
  });
}

inline SparseAdagradKernels make_sparse_adagrad_kernels() {
  return SparseAdagradKernels{&sparse_adagrad_range<float>, &sparse_adagrad_range<double>,
                              &sparse_adagrad_range<bf16>, &sparse_adagrad_range<fp16>};
}

// ---- row-wise Adagrad (Note [Row-wise Adagrad] in math/rowwise_adagrad.h) -------------------

// The row's sum of squares in the lane order of Note [Row sum lanes]: 32 lanes as 32 / W
// vectors over the full 32-element chunks, the tail added lane by lane, then the fixed fold.
template <class S, bool kMaximize, math::RowwiseDecay kDecay, class G>
PYOPTIM_INLINE opmath_t<S> rowwise_square_sum(const S* __restrict__ p_row,
                                              const G* __restrict__ g_row, int64_t width,
                                              const math::RowwiseAdagradCoeffs<opmath_t<S>> c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int kLanes = math::kRowSumLanes;
  constexpr int W = VecOf<S>::kSize;
  constexpr int kVecs = kLanes / W;
  static_assert(kLanes % W == 0, "the lanes are whole vectors");
  constexpr bool kL2 = kDecay == math::RowwiseDecay::kL2;
  V acc[kVecs];
  for (int v = 0; v < kVecs; ++v) acc[v] = V(T(0));
  int64_t j = 0;
  for (; j + kLanes <= width; j += kLanes) {
    for (int v = 0; v < kVecs; ++v) {
      const V p = kL2 ? V(vload(p_row + j + v * W)) : V(T(0));
      acc[v] = acc[v] + math::rowwise_adagrad_square<kMaximize, kDecay>(
                            V(vload(g_row + j + v * W)), p, c);
    }
  }
  T lanes[kLanes];
  for (int v = 0; v < kVecs; ++v) vstore(lanes + v * W, acc[v]);
  for (int l = 0; j < width; ++j, ++l) {  // the tail, into lanes 0 .. width % 32 - 1
    const T p = kL2 ? T(to_opmath(p_row[j])) : T(0);
    lanes[l] = lanes[l] + math::rowwise_adagrad_square<kMaximize, kDecay>(
                              T(to_opmath(g_row[j])), p, c);
  }
  return math::fold_row_sum_lanes(lanes);
}

template <class S, bool kMaximize, math::RowwiseDecay kDecay, class G>
PYOPTIM_INLINE void rowwise_adagrad_row(S* __restrict__ p_row, opmath_t<S>* __restrict__ sum,
                                        const G* __restrict__ g_row, int64_t width,
                                        const math::RowwiseAdagradCoeffs<opmath_t<S>> c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  const T square_sum = rowwise_square_sum<S, kMaximize, kDecay>(p_row, g_row, width, c);
  const math::RowwiseScale<T> r =
      math::rowwise_adagrad_row<kDecay>(*sum, square_sum, static_cast<T>(width), c);
  int64_t j = 0;
  for (; j + W <= width; j += W) {
    V p = vload(p_row + j);
    math::rowwise_adagrad_update<kMaximize>(p, V(vload(g_row + j)), r);
    vstore(p_row + j, p);
  }
  for (; j < width; ++j) {  // tail: the same math on single elements
    T p = to_opmath(p_row[j]);
    math::rowwise_adagrad_update<kMaximize>(p, T(to_opmath(g_row[j])), r);
    p_row[j] = from_opmath<S>(p);
  }
}

template <class S, bool kMaximize, math::RowwiseDecay kDecay>
void rowwise_adagrad_loop(const AdagradRowsPtrs& a, int64_t u_begin, int64_t u_end,
                          const math::RowwiseAdagradCoeffs<opmath_t<S>> c,
                          opmath_t<S>* scratch) {
  S* const param = static_cast<S*>(a.param);
  opmath_t<S>* const sum = static_cast<opmath_t<S>*>(a.state_sum);
  for (int64_t u = u_begin; u < u_end; ++u) {
    if (u + kAdagradRowsPrefetchRows < u_end) {
      prefetch_adagrad_row<S>(a, u + kAdagradRowsPrefetchRows, /*row_state=*/false);
    }
    with_row_gradient<S>(a, u, scratch, [&](int64_t r, const auto* g_row) {
      rowwise_adagrad_row<S, kMaximize, kDecay>(param + r * a.param_row_stride,
                                                sum + r * a.state_row_stride, g_row, a.width, c);
    });
  }
}

template <class S>
void rowwise_adagrad_range(const AdagradRowsPtrs& a, int64_t u_begin, int64_t u_end,
                           const math::RowwiseAdagradCoeffs<opmath_t<S>>& c,
                           RowwiseAdagradFlags f, opmath_t<S>* scratch) {
  using math::RowwiseDecay;
  PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
    switch (f.decay) {
      case RowwiseDecay::kL2:
        return rowwise_adagrad_loop<S, kMaximize, RowwiseDecay::kL2>(a, u_begin, u_end, c,
                                                                     scratch);
      case RowwiseDecay::kDecoupled:
        return rowwise_adagrad_loop<S, kMaximize, RowwiseDecay::kDecoupled>(a, u_begin, u_end,
                                                                            c, scratch);
      default:
        return rowwise_adagrad_loop<S, kMaximize, RowwiseDecay::kNone>(a, u_begin, u_end, c,
                                                                       scratch);
    }
  });
}

inline RowwiseAdagradKernels make_rowwise_adagrad_kernels() {
  return RowwiseAdagradKernels{&rowwise_adagrad_range<float>, &rowwise_adagrad_range<double>,
                               &rowwise_adagrad_range<bf16>, &rowwise_adagrad_range<fp16>};
}
