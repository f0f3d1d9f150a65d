// Adam loops for one ISA level: vector body + scalar tail, both calling math::adam_step (and,
// for the 16-bit modes of Note [Master weights and stochastic rounding], the rounding of
// math/stochastic_round.h). Included by cpu/kernels_impl.h inside namespace pyoptim::cpu::<isa>.

// The param's store. kSR (bfloat16 only): rounded stochastically with the random bits of
// element `lo` (its index's low 32 bits; the key covers the high ones).
template <bool kSR, class S, class V>
PYOPTIM_INLINE void store_param(S* p, V x, uint32_t lo, const math::SrKey& key) {
  if constexpr (kSR) {
    vstore_bits(p, math::round_bf16_stochastic(x, math::sr_random16(viota(lo), key)));
  } else {
    vstore(p, x);
  }
}
template <bool kSR, class S>
PYOPTIM_INLINE void store_param_tail(S* p, opmath_t<S> x, uint32_t lo, const math::SrKey& key) {
  if constexpr (kSR) {
    p->x = static_cast<uint16_t>(math::round_bf16_stochastic(x, math::sr_random16(lo, key)));
  } else {
    *p = from_opmath<S>(x);
  }
}

// The prefetch (Note [Streaming prefetch]) of one iteration of an Adam loop advancing kStep
// elements: the param and moments (written), the grad, max_exp_avg_sq with kAmsgrad.
template <int64_t kStep, bool kAmsgrad, class P, class M, class Q>
PYOPTIM_INLINE void prefetch_adam(const P* param, const P* grad, const M* exp_avg,
                                  const Q* exp_avg_sq, const Q* max_sq, int64_t i) {
  prefetch_ahead<kStep, true>(param, i);
  prefetch_ahead<kStep>(grad, i);
  prefetch_ahead<kStep, true>(exp_avg, i);
  prefetch_ahead<kStep, true>(exp_avg_sq, i);
  if constexpr (kAmsgrad) prefetch_ahead<kStep, true>(max_sq, i);
}

// [begin, end): with kSR, within one block of 2^32 elements (adam_range splits at them), so
// uint32(i) + lane never wraps.
template <class S, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale, bool kSR>
void adam_loop(const AdamPtrs& a, int64_t begin, int64_t end,
               const math::AdamCoeffs<opmath_t<S>> c, const math::SrKey& key) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  S* __restrict__ param = static_cast<S*>(a.param);
  const S* __restrict__ grad = static_cast<const S*>(a.grad);
  S* __restrict__ exp_avg = static_cast<S*>(a.exp_avg);
  S* __restrict__ exp_avg_sq = static_cast<S*>(a.exp_avg_sq);
  S* __restrict__ max_sq = static_cast<S*>(a.max_exp_avg_sq);
  int64_t i = begin;
  // two vectors per register of 16-bit values (in an interleaved lane order: not with kSR, whose
  // random bits follow the element index)
  if constexpr (HasPaired<S>::value && !kSR) {
    for (; i + 2 * W <= end; i += 2 * W) {
      prefetch_adam<2 * W, kAmsgrad>(param, grad, exp_avg, exp_avg_sq, max_sq, i);
      V p0, p1, g0, g1, m0, m1, v0, v1, x0, x1;
      vload2(param + i, p0, p1);
      vload2(grad + i, g0, g1);
      vload2(exp_avg + i, m0, m1);
      vload2(exp_avg_sq + i, v0, v1);
      if (kAmsgrad) {
        vload2(max_sq + i, x0, x1);
      } else {
        x0 = v0;
        x1 = v1;
      }
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p0, g0, m0, v0, x0, c);
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p1, g1, m1, v1, x1, c);
      vstore2(param + i, p0, p1);
      vstore2(exp_avg + i, m0, m1);
      vstore2(exp_avg_sq + i, v0, v1);
      if (kAmsgrad) vstore2(max_sq + i, x0, x1);
    }
  }
  for (; i + W <= end; i += W) {
    if constexpr (kPrefetchAdam<S>) {  // stream_prefetch_impl.h
      prefetch_adam<W, kAmsgrad>(param, grad, exp_avg, exp_avg_sq, max_sq, i);
    }
    V p = vload(param + i), m = vload(exp_avg + i), v = vload(exp_avg_sq + i);
    V vmax = kAmsgrad ? vload(max_sq + i) : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, vload(grad + i), m, v, vmax, c);
    store_param<kSR>(param + i, p, static_cast<uint32_t>(i), key);
    vstore(exp_avg + i, m);
    vstore(exp_avg_sq + i, v);
    if (kAmsgrad) vstore(max_sq + i, vmax);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    T p = to_opmath(param[i]), m = to_opmath(exp_avg[i]), v = to_opmath(exp_avg_sq[i]);
    T vmax = kAmsgrad ? to_opmath(max_sq[i]) : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, to_opmath(grad[i]), m, v, vmax, c);
    store_param_tail<kSR>(param + i, p, static_cast<uint32_t>(i), key);
    exp_avg[i] = from_opmath<S>(m);
    exp_avg_sq[i] = from_opmath<S>(v);
    if (kAmsgrad) max_sq[i] = from_opmath<S>(vmax);
  }
}

// The compensated store of Note [Kahan-compensated 16-bit params] (math/stochastic_round.h), for
// adam_kahan_loop and sgd_'s SgdDenseKahan (cpu/sgd_impl.h): p0 the param as stored (widened),
// q the param after the optimizer's step on p0, c the compensation. The compensated sum is
// stored rounded to nearest and read back (L1) for the new compensation. kahan_store2: two
// vectors of one paired 16-bit access (vload2 / vstore2).
template <class S, class V>
PYOPTIM_INLINE void kahan_store(S* param, S* comp, V p0, V q, V c) {
  const V y = math::kahan_sum(p0, q, c);
  vstore(param, math::kahan_total(p0, q, y));
  vstore(comp, math::kahan_residual(y, p0, vload(param)));
}
template <class S, class V>
PYOPTIM_INLINE void kahan_store2(S* param, S* comp, V p0, V p1, V q0, V q1, V c0, V c1) {
  const V y0 = math::kahan_sum(p0, q0, c0), y1 = math::kahan_sum(p1, q1, c1);
  vstore2(param, math::kahan_total(p0, q0, y0), math::kahan_total(p1, q1, y1));
  V s0, s1;
  vload2(param, s0, s1);  // the stored values, widened
  vstore2(comp, math::kahan_residual(y0, p0, s0), math::kahan_residual(y1, p1, s1));
}
template <class S>
PYOPTIM_INLINE void kahan_store_tail(S* param, S* comp, float p0, float q) {
  const float y = math::kahan_sum(p0, q, to_opmath(*comp));
  *param = from_opmath<S>(math::kahan_total(p0, q, y));
  *comp = from_opmath<S>(math::kahan_residual(y, p0, to_opmath(*param)));
}

// 16-bit params with a Kahan compensation (Note [Kahan-compensated 16-bit params] in
// math/stochastic_round.h): the step on the widened param, then kahan_store.
template <class S, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
void adam_kahan_loop(const AdamPtrs& a, int64_t begin, int64_t end,
                     const math::AdamCoeffs<float> c) {
  using V = typename VecOf<S>::type;
  constexpr int64_t W = VecOf<S>::kSize;
  S* __restrict__ param = static_cast<S*>(a.param);
  const S* __restrict__ grad = static_cast<const S*>(a.grad);
  S* __restrict__ exp_avg = static_cast<S*>(a.exp_avg);
  S* __restrict__ exp_avg_sq = static_cast<S*>(a.exp_avg_sq);
  S* __restrict__ max_sq = static_cast<S*>(a.max_exp_avg_sq);
  S* __restrict__ comp = static_cast<S*>(a.kahan_comp);
  int64_t i = begin;
  if constexpr (HasPaired<S>::value) {  // two vectors per register (see adam_loop)
    for (; i + 2 * W <= end; i += 2 * W) {
      prefetch_adam<2 * W, kAmsgrad>(param, grad, exp_avg, exp_avg_sq, max_sq, i);
      prefetch_ahead<2 * W, true>(comp, i);
      V p0, p1, g0, g1, m0, m1, v0, v1, x0, x1, c0, c1;
      vload2(param + i, p0, p1);
      vload2(grad + i, g0, g1);
      vload2(exp_avg + i, m0, m1);
      vload2(exp_avg_sq + i, v0, v1);
      vload2(comp + i, c0, c1);
      if (kAmsgrad) {
        vload2(max_sq + i, x0, x1);
      } else {
        x0 = v0;
        x1 = v1;
      }
      V q0 = p0, q1 = p1;
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(q0, g0, m0, v0, x0, c);
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(q1, g1, m1, v1, x1, c);
      kahan_store2(param + i, comp + i, p0, p1, q0, q1, c0, c1);
      vstore2(exp_avg + i, m0, m1);
      vstore2(exp_avg_sq + i, v0, v1);
      if (kAmsgrad) vstore2(max_sq + i, x0, x1);
    }
  }
  for (; i + W <= end; i += W) {
    prefetch_adam<W, kAmsgrad>(param, grad, exp_avg, exp_avg_sq, max_sq, i);
    prefetch_ahead<W, true>(comp, i);
    const V p0 = vload(param + i);
    V q = p0, m = vload(exp_avg + i), v = vload(exp_avg_sq + i);
    V vmax = kAmsgrad ? vload(max_sq + i) : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(q, vload(grad + i), m, v, vmax, c);
    kahan_store(param + i, comp + i, p0, q, vload(comp + i));
    vstore(exp_avg + i, m);
    vstore(exp_avg_sq + i, v);
    if (kAmsgrad) vstore(max_sq + i, vmax);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    const float p0 = to_opmath(param[i]);
    float q = p0, m = to_opmath(exp_avg[i]), v = to_opmath(exp_avg_sq[i]);
    float vmax = kAmsgrad ? to_opmath(max_sq[i]) : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(q, to_opmath(grad[i]), m, v, vmax, c);
    kahan_store_tail(param + i, comp + i, p0, q);
    exp_avg[i] = from_opmath<S>(m);
    exp_avg_sq[i] = from_opmath<S>(v);
    if (kAmsgrad) max_sq[i] = from_opmath<S>(vmax);
  }
}

// 16-bit params P with float32 master weights and moments: the math runs on the master (as for
// a float32 param), and the param is stored rounded to nearest from the new master.
template <class P, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
void adam_master_loop(const AdamPtrs& a, int64_t begin, int64_t end,
                      const math::AdamCoeffs<float> c) {
  using V = typename VecOf<float>::type;
  constexpr int64_t W = VecOf<float>::kSize;
  static_assert(VecOf<P>::kSize == W, "16-bit and float32 vectors have the same lanes");
  P* __restrict__ param = static_cast<P*>(a.param);
  const P* __restrict__ grad = static_cast<const P*>(a.grad);
  float* __restrict__ master = static_cast<float*>(a.master_param);
  float* __restrict__ exp_avg = static_cast<float*>(a.exp_avg);
  float* __restrict__ exp_avg_sq = static_cast<float*>(a.exp_avg_sq);
  float* __restrict__ max_sq = static_cast<float*>(a.max_exp_avg_sq);
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    prefetch_adam<W, kAmsgrad>(param, grad, exp_avg, exp_avg_sq, max_sq, i);
    prefetch_ahead<W, true>(master, i);
    V p = vload(master + i), m = vload(exp_avg + i), v = vload(exp_avg_sq + i);
    V vmax = kAmsgrad ? vload(max_sq + i) : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, vload(grad + i), m, v, vmax, c);
    vstore(master + i, p);
    vstore(param + i, p);  // master.to(param dtype): round to nearest even
    vstore(exp_avg + i, m);
    vstore(exp_avg_sq + i, v);
    if (kAmsgrad) vstore(max_sq + i, vmax);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    float p = master[i], m = exp_avg[i], v = exp_avg_sq[i];
    float vmax = kAmsgrad ? max_sq[i] : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, to_opmath(grad[i]), m, v, vmax, c);
    master[i] = p;
    param[i] = from_opmath<P>(p);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (kAmsgrad) max_sq[i] = vmax;
  }
}

// Float32 params with reduced-precision moments (Note [Reduced-precision optimizer states] in
// math/quantize.h). No amsgrad (the op rejects it). `key`: the state stream's key of the 2^32
// block holding [begin, end).

// bfloat16 moments, stored rounded stochastically: 20 bytes per element.
template <bool kDecoupled, bool kMaximize, bool kScale>
void adam_bf16_state_loop(const AdamPtrs& a, int64_t begin, int64_t end,
                          const math::AdamCoeffs<float> c, const math::SrKey& key) {
  using V = typename VecOf<float>::type;
  using U = VecU;
  constexpr int64_t W = VecOf<float>::kSize;
  float* __restrict__ param = static_cast<float*>(a.param);
  const float* __restrict__ grad = static_cast<const float*>(a.grad);
  bf16* __restrict__ exp_avg = static_cast<bf16*>(a.exp_avg);
  bf16* __restrict__ exp_avg_sq = static_cast<bf16*>(a.exp_avg_sq);
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    prefetch_adam<W, false>(param, grad, exp_avg, exp_avg_sq, exp_avg_sq, i);
    V p = vload(param + i), m = vload(exp_avg + i), v = vload(exp_avg_sq + i), vmax = v;
    math::adam_step<kDecoupled, false, kMaximize, kScale>(p, vload(grad + i), m, v, vmax, c);
    vstore(param + i, p);
    U m_bits, v_bits;
    math::round_moments_bf16(m, v, math::sr_random32(viota(static_cast<uint32_t>(i)), key),
                             m_bits, v_bits);
    vstore_bits(exp_avg + i, m_bits);
    vstore_bits(exp_avg_sq + i, v_bits);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    float p = param[i], m = to_opmath(exp_avg[i]), v = to_opmath(exp_avg_sq[i]), vmax = v;
    math::adam_step<kDecoupled, false, kMaximize, kScale>(p, grad[i], m, v, vmax, c);
    param[i] = p;
    uint32_t m_bits, v_bits;
    math::round_moments_bf16(m, v, math::sr_random32(static_cast<uint32_t>(i), key), m_bits,
                             v_bits);
    exp_avg[i].x = static_cast<uint16_t>(m_bits);
    exp_avg_sq[i].x = static_cast<uint16_t>(v_bits);
  }
}

// 8-bit moments with one scale per kQ8Block elements: 16 bytes per element. [begin, end) starts
// at a block boundary (the op splits at them) and holds whole blocks but perhaps the tensor's
// last. Per block: decode, step, keep the new exp_avg and sqrt(exp_avg_sq) in two block buffers
// (L1) with their largest magnitudes (math::q8_absmax_bits), then the block's scales and the
// codes, four vectors to a store (vstore_codes4) and the tensor's last block's rest one by one.
template <bool kDecoupled, bool kMaximize, bool kScale>
void adam_q8_state_loop(const AdamPtrs& a, int64_t begin, int64_t end,
                        const math::AdamCoeffs<float> c, const math::SrKey& key) {
  using V = typename VecOf<float>::type;
  using U = VecU;
  constexpr int64_t W = VecOf<float>::kSize;
  constexpr int64_t B = math::kQ8Block;
  float* __restrict__ param = static_cast<float*>(a.param);
  const float* __restrict__ grad = static_cast<const float*>(a.grad);
  int8_t* __restrict__ exp_avg = static_cast<int8_t*>(a.exp_avg);
  uint8_t* __restrict__ exp_avg_sq = static_cast<uint8_t*>(a.exp_avg_sq);
  float* __restrict__ m_scale = static_cast<float*>(a.exp_avg_scale);
  float* __restrict__ v_scale = static_cast<float*>(a.exp_avg_sq_scale);
  alignas(64) float mbuf[B];
  alignas(64) float rbuf[B];
  for (int64_t b0 = begin; b0 < end; b0 += B) {
    const int64_t n = end - b0 < B ? end - b0 : B;
    const int64_t blk = b0 / B;
    const float ms = m_scale[blk], vs = v_scale[blk];
    float* __restrict__ pb = param + b0;
    const float* __restrict__ gb = grad + b0;
    int8_t* __restrict__ mb = exp_avg + b0;
    uint8_t* __restrict__ vb = exp_avg_sq + b0;
    U m_acc = U(0u), r_acc = U(0u);
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      prefetch_adam<W, false>(pb, gb, mb, vb, vb, j);
      V p = vload(pb + j);
      V m = math::q8_decode_signed(vload_code(mb + j), ms);
      V v = math::q8_decode_sqrt(vload_code(vb + j), vs), vmax = v;
      const V root = math::adam_step_root<kDecoupled, false, kMaximize, kScale>(
          p, vload(gb + j), m, v, vmax, c);
      vstore(pb + j, p);
      vstore(mbuf + j, m);
      vstore(rbuf + j, root);
      m_acc = math::q8_absmax_bits(m_acc, m);
      r_acc = math::q8_absmax_bits(r_acc, root);
    }
    uint32_t m_max = vhmax_u32(m_acc), r_max = vhmax_u32(r_acc);
    for (; j < n; ++j) {  // tail: the same math on single elements
      float p = pb[j];
      float m = math::q8_decode_signed(static_cast<float>(mb[j]), ms);
      float v = math::q8_decode_sqrt(static_cast<float>(vb[j]), vs), vmax = v;
      const float root =
          math::adam_step_root<kDecoupled, false, kMaximize, kScale>(p, gb[j], m, v, vmax, c);
      pb[j] = p;
      mbuf[j] = m;
      rbuf[j] = root;
      m_max = math::q8_absmax_bits(m_max, m);
      r_max = math::q8_absmax_bits(r_max, root);
    }
    const math::Q8Scale mq = math::q8_scale_signed(bits_to_f32(m_max));
    const math::Q8Scale vq = math::q8_scale_sqrt(bits_to_f32(r_max));
    m_scale[blk] = mq.scale;
    v_scale[blk] = vq.scale;
    if (!mq.finite || !vq.finite) {  // NaN or inf in the block: codes 0, scales NaN
      m_scale[blk] = v_scale[blk] = math::q8_nan();
      std::memset(mb, 0, n);
      std::memset(vb, 0, n);
      continue;
    }
    j = 0;
    for (; j + 4 * W <= n; j += 4 * W) {
      U mc[4], vc[4];
      for (int q = 0; q < 4; ++q) {
        const int64_t k = j + q * W;
        const U bits = math::sr_random32(viota(static_cast<uint32_t>(b0 + k)), key);
        mc[q] = math::q8_encode_signed(vload(mbuf + k), mq.inv16, math::bits_of_m(bits));
        vc[q] = math::q8_encode_sqrt(vload(rbuf + k), vq.inv16, math::bits_of_v(bits));
      }
      vstore_codes4(mb + j, mc);
      vstore_codes4(vb + j, vc);
    }
    for (; j + W <= n; j += W) {
      const U bits = math::sr_random32(viota(static_cast<uint32_t>(b0 + j)), key);
      vstore_code(mb + j, math::q8_encode_signed(vload(mbuf + j), mq.inv16, math::bits_of_m(bits)));
      vstore_code(vb + j, math::q8_encode_sqrt(vload(rbuf + j), vq.inv16, math::bits_of_v(bits)));
    }
    for (; j < n; ++j) {
      const uint32_t bits = math::sr_random32(static_cast<uint32_t>(b0 + j), key);
      mb[j] = static_cast<int8_t>(
          math::q8_encode_signed(mbuf[j], mq.inv16, math::bits_of_m(bits)) & 0xFFu);
      vb[j] = static_cast<uint8_t>(
          math::q8_encode_sqrt(rbuf[j], vq.inv16, math::bits_of_v(bits)) & 0xFFu);
    }
  }
}

// fn(lo, hi, key) for the parts of [begin, end) in each block of 2^32 elements, with the key of
// (seed, step, that block, stream) (Note [Master weights and stochastic rounding]; SGD, which
// has no step count, passes step 0). Also used by sgd_impl.h.
template <class F>
PYOPTIM_INLINE void for_each_sr_block(uint64_t seed, uint64_t step, int64_t begin, int64_t end,
                                      uint64_t stream, const F& fn) {
  constexpr int64_t kBlock = int64_t(1) << 32;
  for (int64_t lo = begin; lo < end;) {
    const int64_t block = lo / kBlock;
    const int64_t hi = end < (block + 1) * kBlock ? end : (block + 1) * kBlock;
    fn(lo, hi, math::sr_key(seed, step, uint64_t(block), stream));
    lo = hi;
  }
}

template <class S>
void adam_range(const AdamPtrs& a, int64_t begin, int64_t end,
                const math::AdamCoeffs<opmath_t<S>>& c, AdamFlags f) {
  PYOPTIM_BOOL_SWITCH(f.decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
      PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
        PYOPTIM_BOOL_SWITCH(f.scale, kScale, [&] {
          if constexpr (std::is_same<S, bf16>::value || std::is_same<S, fp16>::value) {
            if (f.kahan) {
              adam_kahan_loop<S, kDecoupled, kAmsgrad, kMaximize, kScale>(a, begin, end, c);
              return;
            }
          }
          if constexpr (std::is_same<S, bf16>::value) {
            if (f.stochastic_round) {  // one key per block of 2^32 elements
              for_each_sr_block(a.sr_seed, a.sr_step, begin, end, 0,
                                [&](int64_t lo, int64_t hi, math::SrKey key) {
                                  adam_loop<S, kDecoupled, kAmsgrad, kMaximize, kScale, true>(
                                      a, lo, hi, c, key);
                                });
              return;
            }
          }
          if constexpr (std::is_same<S, float>::value) {
            if (f.states != StateFormat::kParam) {
              for_each_sr_block(
                  a.sr_seed, a.sr_step, begin, end, math::kStateStream,
                  [&](int64_t lo, int64_t hi, math::SrKey key) {
                    if (f.states == StateFormat::kBf16) {
                      adam_bf16_state_loop<kDecoupled, kMaximize, kScale>(a, lo, hi, c, key);
                    } else {
                      adam_q8_state_loop<kDecoupled, kMaximize, kScale>(a, lo, hi, c, key);
                    }
                  });
              return;
            }
          }
          adam_loop<S, kDecoupled, kAmsgrad, kMaximize, kScale, false>(a, begin, end, c,
                                                                       math::SrKey{0, 0});
        });
      });
    });
  });
}

template <class P>
void adam_master_range(const AdamPtrs& a, int64_t begin, int64_t end,
                       const math::AdamCoeffs<float>& c, AdamFlags f) {
  PYOPTIM_BOOL_SWITCH(f.decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
      PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
        PYOPTIM_BOOL_SWITCH(f.scale, kScale, [&] {
          adam_master_loop<P, kDecoupled, kAmsgrad, kMaximize, kScale>(a, begin, end, c);
        });
      });
    });
  });
}

// Float32 moments to 8-bit codes and scales (round to nearest: a conversion), and back.
// sqrt_map: x is an exp_avg_sq (encoded through its square root).
void q8_encode(const float* x, int64_t n, void* codes, float* scales, bool sqrt_map) {
  constexpr uint32_t kHalf = 0x8000u;  // r / 2^16 = 1/2: round to nearest
  for (int64_t b0 = 0; b0 < n; b0 += math::kQ8Block) {
    const int64_t e = n - b0 < math::kQ8Block ? n : b0 + math::kQ8Block;
    float mx = 0.0f;
    for (int64_t j = b0; j < e; ++j) {
      mx = sqrt_map ? math::q8_max(mx, math::vsqrt(x[j])) : math::q8_absmax(mx, x[j]);
    }
    const math::Q8Scale q = sqrt_map ? math::q8_scale_sqrt(mx) : math::q8_scale_signed(mx);
    scales[b0 / math::kQ8Block] = q.finite ? q.scale : math::q8_nan();
    for (int64_t j = b0; j < e; ++j) {
      if (!q.finite) {
        static_cast<uint8_t*>(codes)[j] = 0;
      } else if (sqrt_map) {
        static_cast<uint8_t*>(codes)[j] = static_cast<uint8_t>(
            math::q8_encode_sqrt(math::vsqrt(x[j]), q.inv16, kHalf) & 0xFFu);
      } else {
        static_cast<int8_t*>(codes)[j] =
            static_cast<int8_t>(math::q8_encode_signed(x[j], q.inv16, kHalf) & 0xFFu);
      }
    }
  }
}
void q8_decode(const void* codes, const float* scales, int64_t n, float* x, bool sqrt_map) {
  const uint8_t* u = static_cast<const uint8_t*>(codes);
  const int8_t* i8 = static_cast<const int8_t*>(codes);
  for (int64_t j = 0; j < n; ++j) {
    const float s = scales[j / math::kQ8Block];
    x[j] = sqrt_map ? math::q8_decode_sqrt(static_cast<float>(u[j]), s)
                    : math::q8_decode_signed(static_cast<float>(i8[j]), s);
  }
}

inline AdamKernels make_adam_kernels() {
  return AdamKernels{&adam_range<float>,        &adam_range<double>,
                     &adam_range<bf16>,         &adam_range<fp16>,
                     &adam_master_range<bf16>, &adam_master_range<fp16>,
                     &q8_encode,               &q8_decode};
}
