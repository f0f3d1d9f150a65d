// SGD CUDA kernels of the opt-in modes: master weights, stochastic rounding of bfloat16 params
// (Note [Master weights and stochastic rounding] in math/stochastic_round.h), a bfloat16 or 8-bit
// momentum buffer for float32 params (Note [Reduced-precision optimizer states] in
// math/quantize.h), Kahan-compensated 16-bit params (Note [Kahan-compensated 16-bit params]).
// The CPU loops they mirror bit for bit: SgdDenseMaster, SgdDenseSr, SgdBf16Buffer, SgdQ8Buffer
// and SgdDenseKahan in cpu/sgd_impl.h. Launched by the shared launcher
// of cuda/mixed_launch.cuh (Note [Mixed-mode launches]); the op glue is ops/sgd_cuda.cu.
//   * master, stochastic rounding, bfloat16 buffer, Kahan: one thread per element.
//   * 8-bit buffer (exp_avg's signed map and random bits, bits_of_m): one warp per quantization
//     block; decode (skipped on the first step, as the CPU), math::sgd_step, the block's
//     NaN-propagating max of |buf| by shuffles, q8_scale_signed (a NaN or inf max: codes 0 and
//     scale NaN), encode from registers.
// Every mode but Kahan needs momentum (the shared checks), so their functors are for
// kMomentum = true; SgdKahanOp takes it as a parameter (with momentum 0 it reads no buffer). SGD
// has no step count: the keys are sr_key(seed, 0, i >> 32, stream) (stream 0 for the param's
// rounding, math::kStateStream for the buffer's) and the op advances the seed after the step.
// lr, grad_scale and found_inf on the GPU are read by the kernel, as SgdOp (cuda/sgd_kernels.cuh).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cstdint>
#include <vector>

#include "cuda/mixed_launch.cuh"
#include "cuda/sgd_kernels.cuh"
#include "pyoptim/macros.h"
#include "pyoptim/math/quantize.h"
#include "pyoptim/math/sgd.h"
#include "pyoptim/math/stochastic_round.h"

namespace pyoptim {
namespace cuda {
namespace mixed {

// Piece::addr of sgd_'s modes:
//   kMaster:     param (P), grad (P), master, momentum buffer (float32)
//   kSR:         param, grad, momentum buffer (bfloat16)
//   kBf16States: param, grad (float32), momentum buffer (bfloat16)
//   kQ8States:   param, grad (float32), momentum buffer codes (int8), its block scales
//                (float32, one per block; offset to the piece's first block)
//   kKahan:      param, grad, momentum buffer (null without momentum), kahan_comp (P: bfloat16
//                or float16, all four)
inline std::array<int, 6> sgd_element_bytes(Mode mode, int param_bytes) {
  switch (mode) {
    case Mode::kMaster: return {param_bytes, param_bytes, 4, 4, 0, 0};
    case Mode::kSR: return {2, 2, 2, 0, 0, 0};
    case Mode::kBf16States: return {4, 4, 2, 0, 0, 0};
    case Mode::kKahan: return {2, 2, 2, 2, 0, 0};
    default: return {4, 4, 1, 0, 0, 0};  // kQ8States; 0: the scales
  }
}

// The step's coefficients, as SgdOp computes them: the host's, or from the lr (and grad_scale)
// read on the device.
template <bool kScale>
__device__ __forceinline__ math::SgdCoeffs<float> sgd_coeffs(const SgdLaunchArgs<float>& a) {
  math::SgdCoeffs<float> cf = a.coeffs;
  if (a.lr_dev.ptr) {
    cf = math::make_sgd_coeffs<float>(a.lr_dev.get(), a.momentum, a.dampening, a.weight_decay,
                                      a.scale);
  }
  if (kScale && a.scale_dev.ptr) cf.grad_scale = static_cast<float>(a.scale_dev.get());
  return cf;
}

__device__ __forceinline__ bool sgd_skipped(const SgdLaunchArgs<float>& a) {
  return a.found_inf.ptr && a.found_inf.get() != 0.0;  // GradScaler: skip the step
}

// 16-bit params P with float32 master weights and buffer (SgdDenseMaster).
template <class P, bool kN, bool kF, bool kMax, bool kS>
struct SgdMasterOp {
  SgdLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (sgd_skipped(a)) return;
    const math::SgdCoeffs<float> cf = sgd_coeffs<kS>(a);
    P* param = static_cast<P*>(pc.addr[0]) + begin;
    const P* grad = static_cast<const P*>(pc.addr[1]) + begin;
    float* master = static_cast<float*>(pc.addr[2]) + begin;
    float* buf = static_cast<float*>(pc.addr[3]) + begin;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      float p = master[j];
      float b = kF ? p : buf[j];
      math::sgd_step<true, kN, kF, kMax, kS>(p, static_cast<float>(grad[j]), b, cf);
      master[j] = p;
      param[j] = P(p);  // master.to(param dtype): round to nearest even
      buf[j] = b;
    }
  }
};

// bfloat16 params and buffer; the param stored rounded stochastically, the buffer to nearest
// (SgdDenseSr).
template <bool kN, bool kF, bool kMax, bool kS>
struct SgdSrOp {
  SgdLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (sgd_skipped(a)) return;
    using B = c10::BFloat16;
    const math::SgdCoeffs<float> cf = sgd_coeffs<kS>(a);
    B* param = static_cast<B*>(pc.addr[0]) + begin;
    const B* grad = static_cast<const B*>(pc.addr[1]) + begin;
    B* buf = static_cast<B*>(pc.addr[2]) + begin;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      float p = static_cast<float>(param[j]);
      float b = kF ? p : static_cast<float>(buf[j]);
      math::sgd_step<true, kN, kF, kMax, kS>(p, static_cast<float>(grad[j]), b, cf);
      const uint32_t lo = static_cast<uint32_t>(begin + j);  // the index in the piece
      param[j].x = static_cast<uint16_t>(
          math::round_bf16_stochastic(p, math::sr_random16(lo, pc.key)));
      buf[j] = B(b);  // the buffer: rounded to nearest, as torch stores it
    }
  }
};

// 16-bit params P with a Kahan compensation, with or without momentum (SgdDenseKahan): the step
// on the widened param (the buffer, of P, to nearest as torch stores it), then kahan_store
// (cuda/mixed_launch.cuh).
template <class P, bool kM, bool kN, bool kF, bool kMax, bool kS>
struct SgdKahanOp {
  SgdLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (sgd_skipped(a)) return;
    const math::SgdCoeffs<float> cf = sgd_coeffs<kS>(a);
    P* param = static_cast<P*>(pc.addr[0]) + begin;
    const P* grad = static_cast<const P*>(pc.addr[1]) + begin;
    P* buf = kM ? static_cast<P*>(pc.addr[2]) + begin : nullptr;
    P* comp = static_cast<P*>(pc.addr[3]) + begin;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float p0 = static_cast<float>(param[j]);
      float q = p0;
      float b = (kM && !kF) ? static_cast<float>(buf[j]) : p0;
      math::sgd_step<kM, kN, kF, kMax, kS>(q, static_cast<float>(grad[j]), b, cf);
      kahan_store(param[j], comp[j], p0, q);
      if (kM) buf[j] = P(b);  // the buffer: rounded to nearest, as torch stores it
    }
  }
};

// float32 params, bfloat16 buffer rounded stochastically with exp_avg's bits (SgdBf16Buffer).
template <bool kN, bool kF, bool kMax, bool kS>
struct SgdBf16BufferOp {
  SgdLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (sgd_skipped(a)) return;
    using B = c10::BFloat16;
    const math::SgdCoeffs<float> cf = sgd_coeffs<kS>(a);
    float* param = static_cast<float*>(pc.addr[0]) + begin;
    const float* grad = static_cast<const float*>(pc.addr[1]) + begin;
    B* buf = static_cast<B*>(pc.addr[2]) + begin;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      float p = param[j];
      float b = kF ? p : static_cast<float>(buf[j]);
      math::sgd_step<true, kN, kF, kMax, kS>(p, grad[j], b, cf);
      param[j] = p;
      const uint32_t bits = math::sr_random32(static_cast<uint32_t>(begin + j), pc.key);
      buf[j].x = static_cast<uint16_t>(math::round_bf16_stochastic(b, math::bits_of_m(bits)));
    }
  }
};

// float32 params, 8-bit buffer with one scale per kQ8Block elements (SgdQ8Buffer): one warp
// per quantization block (Note [Mixed-mode launches]).
template <bool kN, bool kF, bool kMax, bool kS>
struct SgdQ8BufferOp {
  SgdLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (sgd_skipped(a)) return;
    constexpr int64_t B = math::kQ8Block;
    constexpr int kPer = static_cast<int>(B / 32);  // elements per lane
    constexpr int kWarps = kThreads / 32;
    const math::SgdCoeffs<float> cf = sgd_coeffs<kS>(a);
    float* param = static_cast<float*>(pc.addr[0]) + begin;
    const float* grad = static_cast<const float*>(pc.addr[1]) + begin;
    int8_t* codes = static_cast<int8_t*>(pc.addr[2]) + begin;
    float* scale = static_cast<float*>(pc.addr[3]) + begin / B;  // begin: a multiple of B
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int64_t blocks = (n + B - 1) / B;
    for (int64_t blk = threadIdx.x / 32; blk < blocks; blk += kWarps) {  // uniform in a warp
      const int64_t b0 = blk * B;
      const int64_t count = n - b0 < B ? n - b0 : B;
      const float s = scale[blk];  // read before lane 0 writes it
      float bbuf[kPer];
      float mx = 0.0f;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t j = lane + 32 * k;
        bbuf[k] = 0.0f;
        if (j < count) {
          float p = param[b0 + j];
          float b = kF ? p : math::q8_decode_signed(static_cast<float>(codes[b0 + j]), s);
          math::sgd_step<true, kN, kF, kMax, kS>(p, grad[b0 + j], b, cf);
          param[b0 + j] = p;
          bbuf[k] = b;
          mx = math::q8_absmax(mx, b);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {  // the warp's max, NaN-propagating
        mx = math::vmax_nan(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, off));
      }
      const math::Q8Scale q = math::q8_scale_signed(mx);  // !finite: codes 0, scale NaN
      if (lane == 0) scale[blk] = q.finite ? q.scale : math::q8_nan();
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t j = lane + 32 * k;
        if (j >= count) continue;
        if (!q.finite) {
          codes[b0 + j] = 0;
          continue;
        }
        const uint32_t bits = math::sr_random32(static_cast<uint32_t>(begin + b0 + j), pc.key);
        codes[b0 + j] = static_cast<int8_t>(
            math::q8_encode_signed(bbuf[k], q.inv16, math::bits_of_m(bits)) & 0xFFu);
      }
    }
  }
};

// One launch key's tensors in `mode` (not kPlain): param dtype `param_dtype` (16-bit for
// kMaster and kKahan, bfloat16 for kSR, float32 for the state modes), float32 math and
// coefficients, keys at step 0 (SGD's; the op advances the seeds). `momentum`: kKahan only (the
// other modes have it).
inline void launch_sgd_mixed(Mode mode, at::ScalarType param_dtype,
                             const std::vector<MixedItem>& items,
                             const SgdLaunchArgs<float>& args, bool momentum, bool nesterov,
                             bool first, bool maximize, bool scale) {
  const int param_bytes = param_dtype == at::kFloat ? 4 : 2;
  const std::vector<Piece> pieces =
      make_pieces(items, sgd_element_bytes(mode, param_bytes), /*sr_step=*/0,
                  mode == Mode::kSR ? 0 : math::kStateStream);
  PYOPTIM_BOOL_SWITCH(nesterov, kN, [&] {
    PYOPTIM_BOOL_SWITCH(first, kF, [&] {
      PYOPTIM_BOOL_SWITCH(maximize, kMax, [&] {
        PYOPTIM_BOOL_SWITCH(scale, kS, [&] {
          switch (mode) {
            case Mode::kMaster:
              if (param_dtype == at::kBFloat16) {
                launch_pieces(pieces, SgdMasterOp<c10::BFloat16, kN, kF, kMax, kS>{args});
              } else {
                launch_pieces(pieces, SgdMasterOp<c10::Half, kN, kF, kMax, kS>{args});
              }
              break;
            case Mode::kSR:
              launch_pieces(pieces, SgdSrOp<kN, kF, kMax, kS>{args});
              break;
            case Mode::kBf16States:
              launch_pieces(pieces, SgdBf16BufferOp<kN, kF, kMax, kS>{args});
              break;
            case Mode::kQ8States:
              launch_pieces(pieces, SgdQ8BufferOp<kN, kF, kMax, kS>{args});
              break;
            case Mode::kKahan:
              PYOPTIM_BOOL_SWITCH(momentum, kM, [&] {
                if (param_dtype == at::kBFloat16) {
                  launch_pieces(pieces, SgdKahanOp<c10::BFloat16, kM, kN, kF, kMax, kS>{args});
                } else {
                  launch_pieces(pieces, SgdKahanOp<c10::Half, kM, kN, kF, kMax, kS>{args});
                }
              });
              break;
            default:
              TORCH_INTERNAL_ASSERT(false, "launch_sgd_mixed: not a mixed mode");
          }
        });
      });
    });
  });
}

}  // namespace mixed
}  // namespace cuda
}  // namespace pyoptim
