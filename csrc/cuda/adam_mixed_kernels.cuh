// Adam / AdamW CUDA kernels of the opt-in modes: master weights, stochastic rounding of bfloat16
// params (Note [Master weights and stochastic rounding] in math/stochastic_round.h), bfloat16
// and 8-bit moments (Note [Reduced-precision optimizer states] in math/quantize.h), Kahan-
// compensated 16-bit params (Note [Kahan-compensated 16-bit params] in math/stochastic_round.h).
// The CPU loops they mirror bit for bit: adam_master_loop, adam_loop<kSR = true>,
// adam_bf16_state_loop, adam_q8_state_loop and adam_kahan_loop in cpu/adam_impl.h. The op glue
// is ops/adam_cuda.cu.
//
// The launcher (pieces, chunks, keys) is cuda/mixed_launch.cuh: Note [Mixed-mode launches]. Here
// the functors: one thread per element for master, stochastic rounding, bfloat16 moments and
// Kahan;
// 8-bit moments: one warp per quantization block, decoding, stepping (math::adam_step_root) and
// taking the maxima of |m| and sqrt(v) (q8_scale_signed / q8_scale_sqrt: a NaN or inf maximum
// gives codes 0 and both scales NaN).
// Host step counts only for the stochastic modes (the op raises NotImplementedError otherwise):
// their keys depend on the count. Master weights and Kahan (no random bits) also run in device
// mode (the count, lr and found_inf read on the device, as AdamOp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "cuda/adam_kernels.cuh"
#include "cuda/mixed_launch.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "pyoptim/macros.h"
#include "pyoptim/math/adam.h"
#include "pyoptim/math/quantize.h"
#include "pyoptim/math/stochastic_round.h"

namespace pyoptim {
namespace cuda {
namespace mixed {

// Piece::addr of adam_'s modes:
//   kMaster:     param (P), grad (P), master, exp_avg, exp_avg_sq, max_exp_avg_sq (float32)
//   kSR:         param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (bfloat16)
//   kBf16States: param, grad (float32), exp_avg, exp_avg_sq (bfloat16)
//   kQ8States:   param, grad (float32), exp_avg (int8), exp_avg_sq (uint8), exp_avg_scale,
//                exp_avg_sq_scale (float32, one per block; offset to the piece's first block)
//   kKahan:      param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, kahan_comp (P: bfloat16 or
//                float16)

// The coefficients of a piece's tensor: the launch's (host mode) or from its step count.
template <bool kDecoupled, bool kScale>
__device__ __forceinline__ math::AdamCoeffs<float> piece_coeffs(const AdamLaunchArgs<float>& a,
                                                                const Piece& pc) {
  if (a.device_coeffs) return adam_device_coeffs<float>(a, kDecoupled, pc.step);
  math::AdamCoeffs<float> cf = a.coeffs;
  if (kScale && a.scale_dev.ptr) cf.grad_scale = static_cast<float>(a.scale_dev.get());
  return cf;
}

__device__ __forceinline__ bool skipped(const AdamLaunchArgs<float>& a) {
  return a.found_inf.ptr && a.found_inf.get() != 0.0;  // GradScaler: skip the step
}

// 16-bit params P with float32 master weights and moments (adam_master_loop).
template <class P, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
struct MasterOp {
  AdamLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (skipped(a)) return;
    const math::AdamCoeffs<float> cf = piece_coeffs<kDecoupled, kScale>(a, pc);
    P* param = static_cast<P*>(pc.addr[0]) + begin;
    const P* grad = static_cast<const P*>(pc.addr[1]) + begin;
    float* master = static_cast<float*>(pc.addr[2]) + begin;
    float* exp_avg = static_cast<float*>(pc.addr[3]) + begin;
    float* exp_avg_sq = static_cast<float*>(pc.addr[4]) + begin;
    float* max_sq = kAmsgrad ? static_cast<float*>(pc.addr[5]) + begin : nullptr;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      float p = master[j], m = exp_avg[j], v = exp_avg_sq[j];
      float vmax = kAmsgrad ? max_sq[j] : v;
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, static_cast<float>(grad[j]), m,
                                                               v, vmax, cf);
      master[j] = p;
      param[j] = P(p);  // master.to(param dtype): round to nearest even
      exp_avg[j] = m;
      exp_avg_sq[j] = v;
      if (kAmsgrad) max_sq[j] = vmax;
    }
  }
};

// bfloat16 params and moments; the param stored rounded stochastically (adam_loop<kSR = true>).
template <bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
struct SrOp {
  AdamLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (skipped(a)) return;
    using B = c10::BFloat16;
    const math::AdamCoeffs<float> cf = piece_coeffs<kDecoupled, kScale>(a, pc);
    B* param = static_cast<B*>(pc.addr[0]) + begin;
    const B* grad = static_cast<const B*>(pc.addr[1]) + begin;
    B* exp_avg = static_cast<B*>(pc.addr[2]) + begin;
    B* exp_avg_sq = static_cast<B*>(pc.addr[3]) + begin;
    B* max_sq = kAmsgrad ? static_cast<B*>(pc.addr[4]) + begin : nullptr;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      float p = static_cast<float>(param[j]), m = static_cast<float>(exp_avg[j]),
            v = static_cast<float>(exp_avg_sq[j]);
      float vmax = kAmsgrad ? static_cast<float>(max_sq[j]) : v;
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(p, static_cast<float>(grad[j]), m,
                                                               v, vmax, cf);
      const uint32_t lo = static_cast<uint32_t>(begin + j);  // the index in the piece
      param[j].x = static_cast<uint16_t>(
          math::round_bf16_stochastic(p, math::sr_random16(lo, pc.key)));
      exp_avg[j] = B(m);  // moments: rounded to nearest, as torch stores them
      exp_avg_sq[j] = B(v);
      if (kAmsgrad) max_sq[j] = B(vmax);
    }
  }
};

// 16-bit params P and moments with a Kahan compensation (adam_kahan_loop; Note [Kahan-
// compensated 16-bit params]): the step on the widened param, then kahan_store
// (cuda/mixed_launch.cuh).
template <class P, bool kDecoupled, bool kAmsgrad, bool kMaximize, bool kScale>
struct KahanOp {
  AdamLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (skipped(a)) return;
    const math::AdamCoeffs<float> cf = piece_coeffs<kDecoupled, kScale>(a, pc);
    P* param = static_cast<P*>(pc.addr[0]) + begin;
    const P* grad = static_cast<const P*>(pc.addr[1]) + begin;
    P* exp_avg = static_cast<P*>(pc.addr[2]) + begin;
    P* exp_avg_sq = static_cast<P*>(pc.addr[3]) + begin;
    P* max_sq = kAmsgrad ? static_cast<P*>(pc.addr[4]) + begin : nullptr;
    P* comp = static_cast<P*>(pc.addr[5]) + begin;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float p0 = static_cast<float>(param[j]);
      float q = p0, m = static_cast<float>(exp_avg[j]), v = static_cast<float>(exp_avg_sq[j]);
      float vmax = kAmsgrad ? static_cast<float>(max_sq[j]) : v;
      math::adam_step<kDecoupled, kAmsgrad, kMaximize, kScale>(q, static_cast<float>(grad[j]), m,
                                                               v, vmax, cf);
      kahan_store(param[j], comp[j], p0, q);
      exp_avg[j] = P(m);  // moments: rounded to nearest, as torch stores them
      exp_avg_sq[j] = P(v);
      if (kAmsgrad) max_sq[j] = P(vmax);
    }
  }
};

// float32 params, bfloat16 moments rounded stochastically (adam_bf16_state_loop).
template <bool kDecoupled, bool kMaximize, bool kScale>
struct Bf16StateOp {
  AdamLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (skipped(a)) return;
    using B = c10::BFloat16;
    const math::AdamCoeffs<float> cf = piece_coeffs<kDecoupled, kScale>(a, pc);
    float* param = static_cast<float*>(pc.addr[0]) + begin;
    const float* grad = static_cast<const float*>(pc.addr[1]) + begin;
    B* exp_avg = static_cast<B*>(pc.addr[2]) + begin;
    B* exp_avg_sq = static_cast<B*>(pc.addr[3]) + begin;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      float p = param[j], m = static_cast<float>(exp_avg[j]), v = static_cast<float>(exp_avg_sq[j]);
      float vmax = v;
      math::adam_step<kDecoupled, false, kMaximize, kScale>(p, grad[j], m, v, vmax, cf);
      param[j] = p;
      uint32_t m_bits, v_bits;
      math::round_moments_bf16(m, v, math::sr_random32(static_cast<uint32_t>(begin + j), pc.key),
                               m_bits, v_bits);
      exp_avg[j].x = static_cast<uint16_t>(m_bits);
      exp_avg_sq[j].x = static_cast<uint16_t>(v_bits);
    }
  }
};

// float32 params, 8-bit moments with one scale per kQ8Block elements (adam_q8_state_loop): one
// warp per quantization block (Note [Mixed-mode launches]).
template <bool kDecoupled, bool kMaximize, bool kScale>
struct Q8StateOp {
  AdamLaunchArgs<float> a;
  __device__ __forceinline__ void operator()(const Piece& pc, int64_t begin, int64_t n) const {
    if (skipped(a)) return;
    constexpr int64_t B = math::kQ8Block;
    constexpr int kPer = static_cast<int>(B / 32);  // elements per lane
    constexpr int kWarps = kThreads / 32;
    const math::AdamCoeffs<float> cf = piece_coeffs<kDecoupled, kScale>(a, pc);
    float* param = static_cast<float*>(pc.addr[0]) + begin;
    const float* grad = static_cast<const float*>(pc.addr[1]) + begin;
    int8_t* exp_avg = static_cast<int8_t*>(pc.addr[2]) + begin;
    uint8_t* exp_avg_sq = static_cast<uint8_t*>(pc.addr[3]) + begin;
    float* m_scale = static_cast<float*>(pc.addr[4]) + begin / B;  // begin: a multiple of B
    float* v_scale = static_cast<float*>(pc.addr[5]) + begin / B;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int64_t blocks = (n + B - 1) / B;
    for (int64_t blk = threadIdx.x / 32; blk < blocks; blk += kWarps) {  // uniform in a warp
      const int64_t b0 = blk * B;
      const int64_t count = n - b0 < B ? n - b0 : B;
      const float ms = m_scale[blk], vs = v_scale[blk];  // read before lane 0 writes them
      float mbuf[kPer], rbuf[kPer];
      float m_max = 0.0f, r_max = 0.0f;
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t j = lane + 32 * k;
        mbuf[k] = rbuf[k] = 0.0f;
        if (j < count) {
          float p = param[b0 + j];
          float m = math::q8_decode_signed(static_cast<float>(exp_avg[b0 + j]), ms);
          float v = math::q8_decode_sqrt(static_cast<float>(exp_avg_sq[b0 + j]), vs), vmax = v;
          const float root = math::adam_step_root<kDecoupled, false, kMaximize, kScale>(
              p, grad[b0 + j], m, v, vmax, cf);
          param[b0 + j] = p;
          mbuf[k] = m;
          rbuf[k] = root;
          m_max = math::q8_absmax(m_max, m);
          r_max = math::q8_max(r_max, root);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {  // the warp's maxima, NaN-propagating
        m_max = math::vmax_nan(m_max, __shfl_xor_sync(0xFFFFFFFFu, m_max, off));
        r_max = math::vmax_nan(r_max, __shfl_xor_sync(0xFFFFFFFFu, r_max, off));
      }
      const math::Q8Scale mq = math::q8_scale_signed(m_max), vq = math::q8_scale_sqrt(r_max);
      const bool finite = mq.finite && vq.finite;  // else: codes 0, scales NaN
      if (lane == 0) {
        m_scale[blk] = finite ? mq.scale : math::q8_nan();
        v_scale[blk] = finite ? vq.scale : math::q8_nan();
      }
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        const int64_t j = lane + 32 * k;
        if (j >= count) continue;
        if (!finite) {
          exp_avg[b0 + j] = 0;
          exp_avg_sq[b0 + j] = 0;
          continue;
        }
        const uint32_t bits =
            math::sr_random32(static_cast<uint32_t>(begin + b0 + j), pc.key);
        exp_avg[b0 + j] = static_cast<int8_t>(
            math::q8_encode_signed(mbuf[k], mq.inv16, math::bits_of_m(bits)) & 0xFFu);
        exp_avg_sq[b0 + j] = static_cast<uint8_t>(
            math::q8_encode_sqrt(rbuf[k], vq.inv16, math::bits_of_v(bits)) & 0xFFu);
      }
    }
  }
};

// Bytes per element of each array (0: a per-block scale) of a mode, to offset a piece.
inline std::array<int, 6> element_bytes(Mode mode, int param_bytes) {
  switch (mode) {
    case Mode::kMaster: return {param_bytes, param_bytes, 4, 4, 4, 4};
    case Mode::kSR: return {2, 2, 2, 2, 2, 0};
    case Mode::kBf16States: return {4, 4, 2, 2, 0, 0};
    case Mode::kKahan: return {2, 2, 2, 2, 2, 2};
    default: return {4, 4, 1, 1, 0, 0};  // kQ8States; 0: the scales
  }
}

// The pieces of `items` (Note [Mixed-mode launches]), with their keys on the stream `stream`
// (0: the param's bits; math::kStateStream: the moments') at step `sr_step`.
inline std::vector<Piece> make_pieces(const std::vector<MixedItem>& items, Mode mode,
                                      int param_bytes, uint64_t sr_step, uint64_t stream) {
  return make_pieces(items, element_bytes(mode, param_bytes), sr_step, stream);
}

// A functor over the 16-bit param type (MasterOp, KahanOp) for a bfloat16 or float16 param.
template <template <class, bool, bool, bool, bool> class Op, bool kDecoupled, bool kAmsgrad,
          bool kMaximize, bool kScale>
void launch_16bit(at::ScalarType param_dtype, const std::vector<Piece>& pieces,
                  const AdamLaunchArgs<float>& args) {
  if (param_dtype == at::kBFloat16) {
    launch_pieces(pieces, Op<c10::BFloat16, kDecoupled, kAmsgrad, kMaximize, kScale>{args});
  } else {
    launch_pieces(pieces, Op<c10::Half, kDecoupled, kAmsgrad, kMaximize, kScale>{args});
  }
}

// One launch key's tensors in `mode`: param dtype `param_dtype` (16-bit for kMaster, kSR and
// kKahan, float32 for the state modes), float32 math, host step `sr_step` (after the increment)
// for the keys. The op has rejected amsgrad with reduced states.
inline void launch_adam_mixed(Mode mode, at::ScalarType param_dtype,
                              const std::vector<MixedItem>& items, uint64_t sr_step,
                              const AdamLaunchArgs<float>& args, AdamLaunchFlags f) {
  const int param_bytes = param_dtype == at::kFloat ? 4 : 2;
  const std::vector<Piece> pieces = make_pieces(
      items, mode, param_bytes, sr_step, mode == Mode::kSR ? 0 : math::kStateStream);
  PYOPTIM_BOOL_SWITCH(f.decoupled, kDecoupled, [&] {
    PYOPTIM_BOOL_SWITCH(f.maximize, kMaximize, [&] {
      PYOPTIM_BOOL_SWITCH(f.scale, kScale, [&] {
        switch (mode) {
          case Mode::kMaster:
            PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
              launch_16bit<MasterOp, kDecoupled, kAmsgrad, kMaximize, kScale>(param_dtype,
                                                                              pieces, args);
            });
            break;
          case Mode::kSR:
            PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
              launch_pieces(pieces, SrOp<kDecoupled, kAmsgrad, kMaximize, kScale>{args});
            });
            break;
          case Mode::kBf16States:
            launch_pieces(pieces, Bf16StateOp<kDecoupled, kMaximize, kScale>{args});
            break;
          case Mode::kQ8States:
            launch_pieces(pieces, Q8StateOp<kDecoupled, kMaximize, kScale>{args});
            break;
          case Mode::kKahan:
            PYOPTIM_BOOL_SWITCH(f.amsgrad, kAmsgrad, [&] {
              launch_16bit<KahanOp, kDecoupled, kAmsgrad, kMaximize, kScale>(param_dtype,
                                                                             pieces, args);
            });
            break;
          default:
            TORCH_INTERNAL_ASSERT(false, "launch_adam_mixed: not a mixed mode");
        }
      });
    });
  });
}

}  // namespace mixed
}  // namespace cuda
}  // namespace pyoptim
