// Software prefetch for the loops that stream whole arrays front to back (adam_impl.h, sgd_impl.h,
// dense_impl.h). Included by cpu/kernels_impl.h inside namespace pyoptim::cpu::<isa>.
//
// Note [Streaming prefetch]
// The hardware prefetchers follow a sequential stream, but where a loop does much arithmetic per
// byte moved (16-bit and 8-bit arrays, whose widening, rounding and random bits cost more than a
// float32 element's; an AVX2 body, which takes twice AVX-512's iterations) they ran too little
// ahead to keep the memory busy while the core computed: on the 2-core Zen 4 VM of the README's
// tables (64M elements, 2 threads) such a step took about its memory time plus its compute time
// instead of the larger of the two. So every loop over whole arrays (Adam's, SGD's, the dense
// optimizers') asks for each array's line kPrefetchAhead elements ahead (once per 64-byte line).
// Measured (old and new kernels interleaved in one process on the same arrays, medians of paired
// rounds; and whole optimizer steps, old and new builds in alternating processes), the gain depends
// on how busy the host's memory is: Adam float32 at AVX2 18-22 % (but see kPrefetchAdam below),
// the Kahan mode 12-25 %, bfloat16 params 4-15 % (AVX2), bfloat16 states 0-14 %, float32 at AVX-512
// 0-8 %; at AVX2 SGD 9 %, Adamax 19 %, Adagrad 13 % (medians of whole steps in 4 process pairs; at
// AVX-512 they did not change beyond the noise). Into L2 (prefetcht2, locality 1), not L1:
// prefetcht0 made float32 at AVX-512 4 % slower (L1's miss buffers are the demand loads'); 256, 512
// and 1024 elements ahead measured alike; 512 is 2 KiB of a float32 array, 1 KiB of a 16-bit one. A
// prefetch does not fault, so one past an array's end costs a useless line at most; the address is
// computed in integers (no out-of-range pointer). Sparse rows are not streams: the sparse kernels
// prefetch the rows they will update (sparse_rows_impl.h's prefetch_row), and sgd_span, which steps
// both, prefetches ahead only for a whole tensor (kStream).
constexpr int64_t kPrefetchAhead = 512;  // elements
// But Adam's float32 / float64 loop at AVX2 does not prefetch. On the same pages (`python -m
// bench.same_memory`: pyoptim and torch's fused AdamW take turns on one param, grad and state;
// 2026-12-04, 64M, 2 threads, 3 layouts x 2 runs each) it ran 0.79-1.00x torch's speed with the
// prefetch (0.82-0.87x where the memory was fast, ~22 ms a step), 0.95-1.03x in a build with no
// prefetch at all and 1.00-1.16x with this rule; at AVX-512 the prefetch made no difference there
// (0.98-0.99x either way). The other loops keep it: not measured on the same pages.
template <class S>  // adam_loop's param dtype
constexpr bool kPrefetchAdam = sizeof(S) < 4 || PYOPTIM_ISA_ENUM != ::pyoptim::cpu::CpuIsa::kAvx2;
constexpr int kLocality = 1;  // __builtin_prefetch's third argument: prefetcht2 on x86-64
constexpr int64_t kLineBytes = 64;

// The prefetch of one array for one iteration of a loop that advances kStep elements from
// element i: every line of the iteration's range kPrefetchAhead elements ahead that starts a new
// line (one prefetch per line over the whole loop, whatever the array's alignment: kStep elements
// are a divisor or a multiple of a line). kWrite: the loop will write the line.
template <int64_t kStep, bool kWrite = false, class T>
PYOPTIM_INLINE void prefetch_ahead(const T* base, int64_t i) {
  constexpr int64_t kBytes = kStep * static_cast<int64_t>(sizeof(T));
  static_assert(kBytes % kLineBytes == 0 || kLineBytes % kBytes == 0, "a divisor or a multiple");
  const uintptr_t at =
      reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>((i + kPrefetchAhead) * sizeof(T));
  if constexpr (kBytes >= kLineBytes) {
    for (int64_t o = 0; o < kBytes; o += kLineBytes) {
      __builtin_prefetch(reinterpret_cast<const void*>(at + o), kWrite ? 1 : 0, kLocality);
    }
  } else if (at % kLineBytes < static_cast<uintptr_t>(kBytes)) {
    __builtin_prefetch(reinterpret_cast<const void*>(at), kWrite ? 1 : 0, kLocality);
  }
}
