// SGD loops for one ISA level: the dense loop (vector body + scalar tail) and the sparse row
// loop, all calling math::sgd_step. Included by cpu/kernels_impl.h inside namespace
// pyoptim::cpu::<isa>.

// The prefetch (Note [Streaming prefetch]) of one iteration of an SGD loop over whole arrays
// advancing kStep elements: the param (written), the grad, the buffer with momentum (written;
// read after the first step).
template <int64_t kStep, bool kMomentum, class P, class G, class B>
PYOPTIM_INLINE void prefetch_sgd(const P* param, const G* grad, const B* buf, int64_t i) {
  prefetch_ahead<kStep, true>(param, i);
  prefetch_ahead<kStep>(grad, i);
  if constexpr (kMomentum) prefetch_ahead<kStep, true>(buf, i);
}

// Elements [begin, end) of one row (or one whole tensor): p and buf of storage type S, the
// gradient of type G (S for a dense grad or a single sparse value row, opmath_t<S> for a row of
// summed duplicates). kStream: a whole tensor, prefetched ahead (not a sparse row, where the
// line past the row is another row's).
template <class S, class G, bool kMomentum, bool kNesterov, bool kFirst, bool kMaximize,
          bool kScale, bool kStream = false>
PYOPTIM_INLINE void sgd_span(S* __restrict__ param, const G* __restrict__ grad,
                             S* __restrict__ buf, int64_t begin, int64_t end,
                             const math::SgdCoeffs<opmath_t<S>> c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    if constexpr (kStream) prefetch_sgd<W, kMomentum>(param, grad, buf, i);
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
                  const math::SgdCoeffs<opmath_t<S>> c) {
    sgd_span<S, S, kM, kN, kF, kMax, kS, true>(static_cast<S*>(a.param),
                                               static_cast<const S*>(a.grad),
                                               static_cast<S*>(a.momentum_buffer), begin, end, c);
  }
};

// bfloat16 params stored rounded stochastically (the buffer, bfloat16, to nearest as torch
// stores it): Note [Master weights and stochastic rounding]. `key`: stream 0's key of the 2^32
// block holding [begin, end).
struct SgdDenseSr {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end, const math::SgdCoeffs<float> c,
                  const math::SrKey& key) {
    using V = typename VecOf<float>::type;
    constexpr int64_t W = VecOf<float>::kSize;
    bf16* __restrict__ param = static_cast<bf16*>(a.param);
    const bf16* __restrict__ grad = static_cast<const bf16*>(a.grad);
    bf16* __restrict__ buf = static_cast<bf16*>(a.momentum_buffer);
    int64_t i = begin;
    for (; i + W <= end; i += W) {
      prefetch_sgd<W, kM>(param, grad, buf, i);
      V p = vload(param + i);
      V b = (kM && !kF) ? vload(buf + i) : p;
      math::sgd_step<kM, kN, kF, kMax, kS>(p, vload(grad + i), b, c);
      vstore_bits(param + i, math::round_bf16_stochastic(
                                 p, math::sr_random16(viota(static_cast<uint32_t>(i)), key)));
      if (kM) vstore(buf + i, b);
    }
    for (; i < end; ++i) {  // tail: the same math on single elements
      float p = to_opmath(param[i]);
      float b = (kM && !kF) ? to_opmath(buf[i]) : p;
      math::sgd_step<kM, kN, kF, kMax, kS>(p, to_opmath(grad[i]), b, c);
      param[i].x = static_cast<uint16_t>(
          math::round_bf16_stochastic(p, math::sr_random16(static_cast<uint32_t>(i), key)));
      if (kM) buf[i] = from_opmath<bf16>(b);
    }
  }
};

// float32 params with a bfloat16 momentum buffer, stored rounded stochastically (exp_avg's bits
// of Note [Reduced-precision optimizer states]). `key`: the state stream's.
struct SgdBf16Buffer {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end, const math::SgdCoeffs<float> c,
                  const math::SrKey& key) {
    if constexpr (kM) {
      using V = typename VecOf<float>::type;
      constexpr int64_t W = VecOf<float>::kSize;
      float* __restrict__ param = static_cast<float*>(a.param);
      const float* __restrict__ grad = static_cast<const float*>(a.grad);
      bf16* __restrict__ buf = static_cast<bf16*>(a.momentum_buffer);
      int64_t i = begin;
      for (; i + W <= end; i += W) {
        prefetch_sgd<W, kM>(param, grad, buf, i);
        V p = vload(param + i);
        V b = kF ? p : vload(buf + i);
        math::sgd_step<kM, kN, kF, kMax, kS>(p, vload(grad + i), b, c);
        vstore(param + i, p);
        const auto bits = math::sr_random32(viota(static_cast<uint32_t>(i)), key);
        vstore_bits(buf + i, math::round_bf16_stochastic(b, math::bits_of_m(bits)));
      }
      for (; i < end; ++i) {
        float p = param[i];
        float b = kF ? p : to_opmath(buf[i]);
        math::sgd_step<kM, kN, kF, kMax, kS>(p, grad[i], b, c);
        param[i] = p;
        const uint32_t bits = math::sr_random32(static_cast<uint32_t>(i), key);
        buf[i].x = static_cast<uint16_t>(math::round_bf16_stochastic(b, math::bits_of_m(bits)));
      }
    }
  }
};

// float32 params with an 8-bit momentum buffer (exp_avg's map: codes -127..127, one scale per
// block, rounded stochastically). [begin, end) starts at a block boundary.
struct SgdQ8Buffer {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end, const math::SgdCoeffs<float> c,
                  const math::SrKey& key) {
    if constexpr (kM) {
      using V = typename VecOf<float>::type;
      using U = VecU;
      constexpr int64_t W = VecOf<float>::kSize;
      constexpr int64_t B = math::kQ8Block;
      float* __restrict__ param = static_cast<float*>(a.param);
      const float* __restrict__ grad = static_cast<const float*>(a.grad);
      int8_t* __restrict__ buf = static_cast<int8_t*>(a.momentum_buffer);
      float* __restrict__ scale = static_cast<float*>(a.buffer_scale);
      alignas(64) float bbuf[B];
      for (int64_t b0 = begin; b0 < end; b0 += B) {
        const int64_t n = end - b0 < B ? end - b0 : B;
        const int64_t blk = b0 / B;
        const float s = scale[blk];
        float* __restrict__ pb = param + b0;
        const float* __restrict__ gb = grad + b0;
        int8_t* __restrict__ qb = buf + b0;
        U acc = U(0u);
        int64_t j = 0;
        for (; j + W <= n; j += W) {
          prefetch_sgd<W, kM>(pb, gb, qb, j);
          V p = vload(pb + j);
          V b = kF ? p : math::q8_decode_signed(vload_code(qb + j), s);
          math::sgd_step<kM, kN, kF, kMax, kS>(p, vload(gb + j), b, c);
          vstore(pb + j, p);
          vstore(bbuf + j, b);
          acc = math::q8_absmax_bits(acc, b);
        }
        uint32_t mx = vhmax_u32(acc);
        for (; j < n; ++j) {
          float p = pb[j];
          float b = kF ? p : math::q8_decode_signed(static_cast<float>(qb[j]), s);
          math::sgd_step<kM, kN, kF, kMax, kS>(p, gb[j], b, c);
          pb[j] = p;
          bbuf[j] = b;
          mx = math::q8_absmax_bits(mx, b);
        }
        const math::Q8Scale q = math::q8_scale_signed(bits_to_f32(mx));
        if (!q.finite) {  // NaN or inf in the block: codes 0, scale NaN
          scale[blk] = math::q8_nan();
          std::memset(qb, 0, n);
          continue;
        }
        scale[blk] = q.scale;
        j = 0;
        for (; j + 4 * W <= n; j += 4 * W) {
          U codes[4];
          for (int k = 0; k < 4; ++k) {
            const U bits = math::sr_random32(viota(static_cast<uint32_t>(b0 + j + k * W)), key);
            codes[k] = math::q8_encode_signed(vload(bbuf + j + k * W), q.inv16,
                                              math::bits_of_m(bits));
          }
          vstore_codes4(qb + j, codes);
        }
        for (; j + W <= n; j += W) {
          const U bits = math::sr_random32(viota(static_cast<uint32_t>(b0 + j)), key);
          vstore_code(qb + j, math::q8_encode_signed(vload(bbuf + j), q.inv16,
                                                     math::bits_of_m(bits)));
        }
        for (; j < n; ++j) {
          const uint32_t bits = math::sr_random32(static_cast<uint32_t>(b0 + j), key);
          qb[j] = static_cast<int8_t>(
              math::q8_encode_signed(bbuf[j], q.inv16, math::bits_of_m(bits)) & 0xFFu);
        }
      }
    }
  }
};

// 16-bit params S with a Kahan compensation (Note [Kahan-compensated 16-bit params] in
// math/stochastic_round.h): math::sgd_step on the widened param (the buffer, of S, to nearest as
// torch stores it), then the compensated store of adam_kahan_loop (kahan_store, cpu/adam_impl.h),
// with its paired 16-bit accesses.
template <class S>
struct SgdDenseKahan {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end, const math::SgdCoeffs<float> c) {
    using V = typename VecOf<S>::type;
    constexpr int64_t W = VecOf<S>::kSize;
    S* __restrict__ param = static_cast<S*>(a.param);
    const S* __restrict__ grad = static_cast<const S*>(a.grad);
    S* __restrict__ buf = static_cast<S*>(a.momentum_buffer);
    S* __restrict__ comp = static_cast<S*>(a.kahan_comp);
    int64_t i = begin;
    if constexpr (HasPaired<S>::value) {  // two vectors per register (see adam_loop)
      for (; i + 2 * W <= end; i += 2 * W) {
        prefetch_sgd<2 * W, kM>(param, grad, buf, i);
        prefetch_ahead<2 * W, true>(comp, i);
        V p0, p1, g0, g1, c0, c1, b0, b1;
        vload2(param + i, p0, p1);
        vload2(grad + i, g0, g1);
        vload2(comp + i, c0, c1);
        if (kM && !kF) {
          vload2(buf + i, b0, b1);
        } else {
          b0 = p0;
          b1 = p1;
        }
        V q0 = p0, q1 = p1;
        math::sgd_step<kM, kN, kF, kMax, kS>(q0, g0, b0, c);
        math::sgd_step<kM, kN, kF, kMax, kS>(q1, g1, b1, c);
        kahan_store2(param + i, comp + i, p0, p1, q0, q1, c0, c1);
        if (kM) vstore2(buf + i, b0, b1);
      }
    }
    for (; i + W <= end; i += W) {
      prefetch_sgd<W, kM>(param, grad, buf, i);
      prefetch_ahead<W, true>(comp, i);
      const V p0 = vload(param + i);
      V q = p0;
      V b = (kM && !kF) ? vload(buf + i) : p0;
      math::sgd_step<kM, kN, kF, kMax, kS>(q, V(vload(grad + i)), b, c);
      kahan_store(param + i, comp + i, p0, q, vload(comp + i));
      if (kM) vstore(buf + i, b);
    }
    for (; i < end; ++i) {  // tail: the same math on single elements
      const float p0 = to_opmath(param[i]);
      float q = p0;
      float b = (kM && !kF) ? to_opmath(buf[i]) : p0;
      math::sgd_step<kM, kN, kF, kMax, kS>(q, to_opmath(grad[i]), b, c);
      kahan_store_tail(param + i, comp + i, p0, q);
      if (kM) buf[i] = from_opmath<S>(b);
    }
  }
};

template <class S>
void sgd_range(const SgdPtrs& a, int64_t begin, int64_t end,
               const math::SgdCoeffs<opmath_t<S>>& c, SgdFlags f) {
  if constexpr (std::is_same<S, bf16>::value || std::is_same<S, fp16>::value) {
    if (f.kahan) {
      sgd_switch<SgdDenseKahan<S>>(f, a, begin, end, c);
      return;
    }
  }
  if constexpr (std::is_same<S, bf16>::value) {
    if (f.stochastic_round) {
      for_each_sr_block(a.sr_seed, 0, begin, end, 0,
                        [&](int64_t lo, int64_t hi, math::SrKey k) {
                          sgd_switch<SgdDenseSr>(f, a, lo, hi, c, k);
                        });
      return;
    }
  }
  if constexpr (std::is_same<S, float>::value) {
    if (f.states != StateFormat::kParam) {
      for_each_sr_block(a.sr_seed, 0, begin, end, math::kStateStream,
                            [&](int64_t lo, int64_t hi, math::SrKey k) {
                              if (f.states == StateFormat::kBf16) {
                                sgd_switch<SgdBf16Buffer>(f, a, lo, hi, c, k);
                              } else {
                                sgd_switch<SgdQ8Buffer>(f, a, lo, hi, c, k);
                              }
                            });
      return;
    }
  }
  sgd_switch<SgdDense<S>>(f, a, begin, end, c);
}

// 16-bit params P with float32 master weights and buffer: the math runs on the master (as for a
// float32 param), and the param is stored rounded to nearest from the new master.
template <class P>
struct SgdDenseMaster {
  template <bool kM, bool kN, bool kF, bool kMax, bool kS>
  static void run(const SgdPtrs& a, int64_t begin, int64_t end,
                  const math::SgdCoeffs<float> c) {
    using V = typename VecOf<float>::type;
    constexpr int64_t W = VecOf<float>::kSize;
    static_assert(VecOf<P>::kSize == W, "16-bit and float32 vectors have the same lanes");
    P* __restrict__ param = static_cast<P*>(a.param);
    const P* __restrict__ grad = static_cast<const P*>(a.grad);
    float* __restrict__ master = static_cast<float*>(a.master_param);
    float* __restrict__ buf = static_cast<float*>(a.momentum_buffer);
    int64_t i = begin;
    for (; i + W <= end; i += W) {
      prefetch_sgd<W, kM>(param, grad, buf, i);
      prefetch_ahead<W, true>(master, i);
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
//  * otherwise (lazy momentum / weight decay; plain SGD where ATen coalesces first,
//    PlainSparse::kSumFirst): the duplicates are summed in opmath into
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
                  const math::SgdCoeffs<opmath_t<S>> c, opmath_t<S>* scratch) {
    S* param = static_cast<S*>(a.param);
    const S* values = static_cast<const S*>(a.values);
    S* buf = static_cast<S*>(a.momentum_buffer);
    const int64_t w = a.width;
    const bool sequential = !kM && !c.has_weight_decay && a.plain != PlainSparse::kSumFirst;
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
        if (a.plain == PlainSparse::kRoundProduct) {  // one element per entry (no dense dims)
          using T = opmath_t<S>;
          T p = to_opmath(param[index[k]]);
          math::sgd_plain_rounded<kMax, kS>(p, to_opmath(values[k]), c);
          param[index[k]] = from_opmath<S>(p);
        } else {
          sgd_span<S, S, kM, kN, kF, kMax, kS>(param + index[k] * w, values + k * w, nullptr, 0,
                                               w, c);
        }
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
