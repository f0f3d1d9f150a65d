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

// [begin, end): with kSR, within one block of 2^32 elements (adam_range splits at them), so
// uint32(i) + lane never wraps.
template <class S, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale, bool kSR>
void adam_loop(const AdamPtrs& a, int64_t begin, int64_t end,
               const math::AdamCoeffs<opmath_t<S>>& c, const math::SrKey& key) {
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

// 16-bit params P with float32 master weights and moments: the math runs on the master (as for
// a float32 param), and the param is stored rounded to nearest from the new master.
template <class P, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
void adam_master_loop(const AdamPtrs& a, int64_t begin, int64_t end,
                      const math::AdamCoeffs<float>& c) {
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

template <class S>
void adam_range(const AdamPtrs& a, int64_t begin, int64_t end,
                const math::AdamCoeffs<opmath_t<S>>& c, AdamFlags f) {
  PYOPTIM_BOOL_SWITCH(f.decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
      PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
        PYOPTIM_BOOL_SWITCH(f.scale, kScale, [&] {
          if constexpr (std::is_same<S, bf16>::value) {
            if (f.stochastic_round) {  // one key per block of 2^32 elements
              constexpr int64_t kBlock = int64_t(1) << 32;
              for (int64_t lo = begin; lo < end;) {
                const int64_t block = lo / kBlock;
                const int64_t hi = end < (block + 1) * kBlock ? end : (block + 1) * kBlock;
                const math::SrKey key = math::sr_key(a.sr_seed, a.sr_step, uint64_t(block));
                adam_loop<S, kDecoupled, kAmsgrad, kMaximize, kScale, true>(a, lo, hi, c, key);
                lo = hi;
              }
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

inline AdamKernels make_adam_kernels() {
  return AdamKernels{&adam_range<float>,        &adam_range<double>,
                     &adam_range<bf16>,         &adam_range<fp16>,
                     &adam_master_range<bf16>, &adam_master_range<fp16>};
}
