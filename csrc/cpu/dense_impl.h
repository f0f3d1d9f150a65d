// The loops of every dense optimizer (Note [Dense optimizers] in pyoptim/dense.h) for one ISA
// level: a vector body and a scalar tail, both calling Opt::step. Included by
// cpu/kernels_impl.h inside namespace pyoptim::cpu::<isa>.

template <class Opt, class S, unsigned kMask, bool kScale>
void dense_loop(const DensePtrs& a, int64_t begin, int64_t end,
                const DenseArgs<Opt, opmath_t<S>>& args) {
  using V = typename VecOf<S>::type;
  using T = opmath_t<S>;
  constexpr int64_t W = VecOf<S>::kSize;
  constexpr int N = Opt::kStates;
  static_assert(N <= kMaxDenseStates, "raise kMaxDenseStates");
  S* __restrict__ param = static_cast<S*>(a.param);
  const S* __restrict__ grad = static_cast<const S*>(a.grad);
  S* state[N];
  for (int k = 0; k < N; ++k) state[k] = static_cast<S*>(a.state[k]);
  const typename Opt::template Coeffs<T> c = args.coeffs;  // Note [Coefficients by value]
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    prefetch_ahead<W, true>(param, i);  // Note [Streaming prefetch]
    prefetch_ahead<W>(grad, i);
    for (int k = 0; k < N; ++k) prefetch_ahead<W, true>(state[k], i);
    V p = vload(param + i), g = vload(grad + i);
    if (kScale) g = g / math::bcast<V>(args.grad_scale);  // grad / scale (GradScaler unscale)
    V s[N];
    for (int k = 0; k < N; ++k) s[k] = vload(state[k] + i);
    Opt::template step<kMask>(p, g, s, c);
    vstore(param + i, p);
    for (int k = 0; k < N; ++k) vstore(state[k] + i, s[k]);
  }
  for (; i < end; ++i) {  // tail: the same math on single elements
    T p = to_opmath(param[i]), g = to_opmath(grad[i]);
    if (kScale) g = g / args.grad_scale;
    T s[N];
    for (int k = 0; k < N; ++k) s[k] = to_opmath(state[k][i]);
    Opt::template step<kMask>(p, g, s, c);
    param[i] = from_opmath<S>(p);
    for (int k = 0; k < N; ++k) state[k][i] = from_opmath<S>(s[k]);
  }
}

template <class Opt, class S>
void dense_range(const DensePtrs& a, int64_t begin, int64_t end, const void* args,
                 unsigned flags, bool scale) {
  const auto& typed = *static_cast<const DenseArgs<Opt, opmath_t<S>>*>(args);
  mask_switch<(1u << Opt::kFlags)>(flags, [&](auto m) {
    PYOPTIM_BOOL_SWITCH(scale, kScale, [&] {
      dense_loop<Opt, S, decltype(m)::value, kScale>(a, begin, end, typed);
    });
  });
}

template <class Opt>
DenseKernels make_dense_kernels() {
  return DenseKernels{&dense_range<Opt, float>, &dense_range<Opt, double>,
                      &dense_range<Opt, bf16>, &dense_range<Opt, fp16>};
}
