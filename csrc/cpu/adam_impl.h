// Adam loops for one ISA level: vector body + scalar tail, both calling math::adam_step.
// Included by cpu/kernels_impl.h inside namespace pyoptim::cpu::<isa>.

template <class S, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
void adam_loop(const AdamPtrs& a, int64_t begin, int64_t end,
               const math::AdamCoeffs<opmath_t<S>>& c) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  S* __restrict__ param = static_cast<S*>(a.param);
  const S* __restrict__ grad = static_cast<const S*>(a.grad);
  S* __restrict__ exp_avg = static_cast<S*>(a.exp_avg);
  S* __restrict__ exp_avg_sq = static_cast<S*>(a.exp_avg_sq);
  S* __restrict__ max_sq = static_cast<S*>(a.max_exp_avg_sq);
  int64_t i = begin;
  if constexpr (HasPaired<S>::value) {  // two vectors per register of 16-bit values
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
    vstore(param + i, p);
    vstore(exp_avg + i, m);
    vstore(exp_avg_sq + i, v);
    if (kAmsgrad) vstore(max_sq + i, vmax);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    T p = to_opmath(param[i]), m = to_opmath(exp_avg[i]), v = to_opmath(exp_avg_sq[i]);
    T vmax = kAmsgrad ? to_opmath(max_sq[i]) : v;
    math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, to_opmath(grad[i]), m, v, vmax, c);
    param[i] = from_opmath<S>(p);
    exp_avg[i] = from_opmath<S>(m);
    exp_avg_sq[i] = from_opmath<S>(v);
    if (kAmsgrad) max_sq[i] = from_opmath<S>(vmax);
  }
}

template <class S>
void adam_range(const AdamPtrs& a, int64_t begin, int64_t end,
                const math::AdamCoeffs<opmath_t<S>>& c, AdamFlags f) {
  PYOPTIM_BOOL_SWITCH(f.decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
      PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
        PYOPTIM_BOOL_SWITCH(f.scale, kScale, [&] {
          adam_loop<S, kDecoupled, kAmsgrad, kMaximize, kScale>(a, begin, end, c);
        });
      });
    });
  });
}

inline AdamKernels make_adam_kernels() {
  return AdamKernels{&adam_range<float>, &adam_range<double>, &adam_range<bf16>, &adam_range<fp16>};
}
