// SGD loops for one ISA level: the dense loop (vector body + scalar tail) and the sparse row
// loop, all calling math::sgd_step. Included by cpu/kernels_impl.h inside namespace
// pyoptim::cpu::<isa>.

// Elements [begin, end) of one row (or one whole tensor): p and buf of storage type S, the
// gradient of type G (S for a dense grad or a single sparse value row, opmath_t<S> for a row of
// summed duplicates).
template <class S, class G, bool kMomentum, bool kNesterov, bool kFirst, bool kMaximize,
          bool kScale>
PYOPTIM_INLINE void sgd_span(S* __restrict__ param, const G* __restrict__ grad,
                             S* __restrict__ buf, int64_t begin, int64_t end,
                             const math::SgdCoeffs<opmath_t<S>>& c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    V p = vload(param + i);
    V b = (kMomentum && !kFirst) ? vload(buf + i) : p;
    math::sgd_step<kMomentum, kNesterov, kFirst, kMaximize, kScale>(p, V(vload(grad + i)), b, c);
    vstore(param + i, p);
    if (kMomentum) vstore(buf + i, b);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    T p = to_opmath(param[i]);
    T b = (kMomentum && !kFirst) ? to_opmath(buf[i]) : p;
    math::sgd_step<kMomentum, kNesterov, kFirst, kMaximize, kScale>(p, to_opmath(grad[i]), b, c);
    param[i] = from_opmath<S>(p);
    if (kMomentum) buf[i] = from_opmath<S>(b);
  }
}

// Calls Body::run<kMomentum, kNesterov, kFirst, kMaximize, kScale>(args...) for the runtime
// flags (math::sgd_flag_switch).
template <class Body, class... Args>
PYOPTIM_INLINE void sgd_switch(SgdFlags f, const Args&... args) {
  math::sgd_flag_switch(f.momentum, f.nesterov, f.first_step, f.maximize, f.scale,
                        [&](auto m, auto n, auto first, auto mx, auto s) {
                          Body::template run<decltype(m)::value, decltype(n)::value,
                                             decltype(first)::value, decltype(mx)::value,
                                             decltype(s)::value>(args...);
                        });
}

template <class S>
struct SgdDense {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end,
                  const math::SgdCoeffs<opmath_t<S>>& c) {
    sgd_span<S, S, kM, kN, kF, kMax, kS>(static_cast<S*>(a.param), static_cast<const S*>(a.grad),
                                         static_cast<S*>(a.momentum_buffer), begin, end, c);
  }
};

template <class S>
void sgd_range(const SgdPtrs& a, int64_t begin, int64_t end,
               const math::SgdCoeffs<opmath_t<S>>& c, SgdFlags f) {
  sgd_switch<SgdDense<S>>(f, a, begin, end, c);
}

// 16-bit params P with float32 master weights and buffer: the math runs on the master (as for a
// float32 param), and the param is stored rounded to nearest from the new master.
template <class P>
struct SgdDenseMaster {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end,
                  const math::SgdCoeffs<float>& c) {
    using V = typename VecOf<float>::type;
    constexpr int64_t W = VecOf<float>::kSize;
    static_assert(VecOf<P>::kSize == W, "16-bit and float32 vectors have the same lanes");
    P* __restrict__ param = static_cast<P*>(a.param);
    const P* __restrict__ grad = static_cast<const P*>(a.grad);
    float* __restrict__ master = static_cast<float*>(a.master_param);
    float* __restrict__ buf = static_cast<float*>(a.momentum_buffer);
    int64_t i = begin;
    for (; i + W <= end; i += W) {
      V p = vload(master + i);
      V b = (kM && !kF) ? vload(buf + i) : p;
      math::sgd_step<kM, kN, kF, kMax, kS>(p, V(vload(grad + i)), b, c);
      vstore(master + i, p);
      vstore(param + i, p);  // master.to(param dtype): round to nearest even
      if (kM) vstore(buf + i, b);
    }
    for (; i < end; ++i) {  // tail: the same math on single elements
      float p = master[i];
      float b = (kM && !kF) ? buf[i] : p;
      math::sgd_step<kM, kN, kF, kMax, kS>(p, to_opmath(grad[i]), b, c);
      master[i] = p;
      param[i] = from_opmath<P>(p);
      if (kM) buf[i] = b;
    }
  }
};

template <class P>
void sgd_master_range(const SgdPtrs& a, int64_t begin, int64_t end,
                      const math::SgdCoeffs<float>& c, SgdFlags f) {
  sgd_switch<SgdDenseMaster<P>>(f, a, begin, end, c);
}

// Unique rows [u_begin, u_end) of a sparse gradient. See Note [Sparse rows: one deterministic
// pass] in ops/sparse_rows.h and Note [Sparse SGD] in ops/sgd_cpu.cpp.
//  * plain SGD (no momentum, no weight decay): each value row is applied in turn, in position
//    order, to its param row: exactly torch's `param.add_(grad, alpha=-lr)` for a sparse grad,
//    which adds each nnz row in turn (fmadd). The call owns rows[u_begin..u_end) and scans the
//    whole index list for them, so the value rows stream in order.
//  * otherwise (lazy momentum / weight decay): the duplicates are summed in opmath into
//    `scratch`, in the order of Note [Blocked duplicate sums] (math/duplicate_sum.h), then
//    the row is updated once by the same math as the dense kernel.
// Rows are scattered over the table (and their value rows over the gradient), so the hardware
// prefetcher cannot guess the next one: ask for row u + kSparseAhead while updating row u.
constexpr int64_t kSparseAhead = 4;
constexpr int64_t kPrefetchDups = 4;  // value rows prefetched per unique row, at most
constexpr int64_t kPlainAhead = 8;    // plain SGD: owned entries in flight (a power of two)

template <bool kM, class S>
PYOPTIM_INLINE void prefetch_rows(const SgdSparsePtrs& a, int64_t u, const S* param,
                                  const S* values, const S* buf) {
  const int64_t w = a.width;
  prefetch_row<true>(param + a.rows[u] * w, w);
  if (kM) prefetch_row<true>(buf + a.rows[u] * w, w);
  const int64_t k0 = a.offsets[u];
  const int64_t k1 = a.offsets[u + 1] < k0 + kPrefetchDups ? a.offsets[u + 1] : k0 + kPrefetchDups;
  for (int64_t k = k0; k < k1; ++k) prefetch_row(values + a.order[k] * w, w);
}

template <class S>
struct SgdSparse {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdSparsePtrs& a, int64_t u_begin, int64_t u_end,
                  const math::SgdCoeffs<opmath_t<S>>& c, opmath_t<S>* scratch) {
    S* param = static_cast<S*>(a.param);
    const S* values = static_cast<const S*>(a.values);
    S* buf = static_cast<S*>(a.momentum_buffer);
    const int64_t w = a.width;
    const bool sequential = !kM && !c.has_weight_decay;
    if (sequential) {
      // Plain SGD: walk the gradient in its own order (value rows stream in sequentially, as
      // in torch) and apply the entries whose row this call owns, rows[u_begin..u_end). Each
      // row sees its duplicates in position order, whatever the split: torch's bits.
      // The entries this call owns are found kPlainAhead owned entries ahead of the one being
      // applied (a ring of positions), and their param and value rows prefetched then: rows
      // are scattered, so without it each entry waits for its own cache misses.
      const int64_t rlo = a.rows[u_begin], rhi = a.rows[u_end - 1];
      const int64_t* index = a.index;
      int64_t ring[kPlainAhead];
      int64_t head = 0, count = 0, scan = 0;
      for (;;) {
        while (count < kPlainAhead && scan < a.nnz) {  // refill: the next owned entries
          const int64_t r = index[scan];
          if (r >= rlo && r <= rhi) {
            prefetch_row<true>(param + r * w, w);
            prefetch_row(values + scan * w, w);
            ring[(head + count) % kPlainAhead] = scan;
            ++count;
          }
          ++scan;
        }
        if (count == 0) break;
        const int64_t k = ring[head];
        head = (head + 1) % kPlainAhead;
        --count;
        sgd_span<S, S, kM, kN, kF, kMax, kS>(param + index[k] * w, values + k * w, nullptr, 0,
                                             w, c);
      }
      return;
    }
    for (int64_t u = u_begin; u < u_end; ++u) {
      if (u + kSparseAhead < u_end) prefetch_rows<kM>(a, u + kSparseAhead, param, values, buf);
      S* prow = param + a.rows[u] * w;
      S* brow = kM ? buf + a.rows[u] * w : nullptr;
      sum_duplicate_rows<S>(values, w, a.order, a.offsets[u], a.offsets[u + 1], scratch,
                            scratch + w);
      sgd_span<S, opmath_t<S>, kM, kN, kF, kMax, kS>(prow, scratch, brow, 0, w, c);
    }
  }
};

template <class S>
void sgd_sparse_rows(const SgdSparsePtrs& a, int64_t u_begin, int64_t u_end,
                     const math::SgdCoeffs<opmath_t<S>>& c, SgdFlags f, opmath_t<S>* scratch) {
  sgd_switch<SgdSparse<S>>(f, a, u_begin, u_end, c, scratch);
}

inline SgdKernels make_sgd_kernels() {
  return SgdKernels{
      {&sgd_range<float>, &sgd_range<double>, &sgd_range<bf16>, &sgd_range<fp16>,
       &sgd_master_range<bf16>, &sgd_master_range<fp16>},
      {&sgd_sparse_rows<float>, &sgd_sparse_rows<double>, &sgd_sparse_rows<bf16>,
       &sgd_sparse_rows<fp16>}};
}
