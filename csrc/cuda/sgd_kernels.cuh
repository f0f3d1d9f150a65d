// SGD CUDA kernels: the dense functor for multi_tensor_apply and the sparse row kernel (one warp
// per unique row), both calling math::sgd_step. The op glue (checks, planning) is ops/sgd_cuda.cu.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <type_traits>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sparse_rows.cuh"
#include "pyoptim/macros.h"
#include "pyoptim/math/sgd.h"

namespace pyoptim {
namespace cuda {

template <class T>
struct SgdLaunchArgs {
  math::SgdCoeffs<T> coeffs;  // from the host values
  double momentum, dampening, weight_decay, scale;
  mta::ScalarRef lr_dev, scale_dev, found_inf;
};

// Arrays: 0 param, 1 grad (read only), 2 momentum buffer (with momentum).
template <class S, bool kM, bool kN, bool kF, bool kMax, bool kS>
struct SgdOp {
  using T = mta::opmath_t<S>;
  static constexpr int kDepth = kM ? 3 : 2;
  static constexpr unsigned kWrite = kM ? 0x5u : 0x1u;
  SgdLaunchArgs<T> a;

  __device__ __forceinline__ void operator()(const mta::Chunk<kDepth>& c, int64_t) const {
    if (a.found_inf.ptr && a.found_inf.get() != 0.0) return;  // GradScaler: skip the step
    math::SgdCoeffs<T> cf = a.coeffs;
    if (a.lr_dev.ptr) {
      cf = math::make_sgd_coeffs<T>(a.lr_dev.get(), a.momentum, a.dampening, a.weight_decay,
                                    a.scale);
    }
    if (kS && a.scale_dev.ptr) cf.grad_scale = static_cast<T>(a.scale_dev.get());
    mta::for_each_element<S, kDepth, kWrite>(c, [&](T(&x)[kDepth]) {
      T b = x[kDepth - 1];
      math::sgd_step<kM, kN, kF, kMax, kS>(x[0], x[1], b, cf);
      if (kM) x[kDepth - 1] = b;
    });
  }
};

struct SgdWork {
  void* addr[3];
  int64_t numel;
};

template <class S>
void launch_dense(const std::vector<SgdWork>& items, const SgdLaunchArgs<mta::opmath_t<S>>& args,
                  bool momentum, bool nesterov, bool first, bool maximize, bool scale) {
  math::sgd_flag_switch(momentum, nesterov, first, maximize, scale, [&](auto m, auto n, auto f,
                                                                   auto mx, auto s) {
    using Op = SgdOp<S, decltype(m)::value, decltype(n)::value, decltype(f)::value,
                     decltype(mx)::value, decltype(s)::value>;
    constexpr int D = Op::kDepth;
    std::vector<mta::TensorRef<D>> refs(items.size());
    for (size_t k = 0; k < items.size(); ++k) {
      for (int d = 0; d < D; ++d) refs[k].addr[d] = items[k].addr[d];
      refs[k].numel = items[k].numel;
      refs[k].extra = nullptr;
    }
    mta::multi_tensor_apply<S, D>(refs, Op{args});
  });
}

// ---- sparse ----------------------------------------------------------------------------------
constexpr int kSgdWarpsPerBlock = 4;

// One warp per unique row u; each lane keeps kCols columns of the row (cuda/sparse_rows.cuh).
// kSeq (plain SGD, cpu::PlainSparse::kInOrder / kRoundProduct): each value row is applied in
// turn, in position order, rounded to S after each (as the CPU applies and stores them), with
// one fused multiply-add or, kRound, the product rounded first (math::sgd_plain_rounded); else
// (lazy momentum / weight decay, PlainSparse::kSumFirst) the row's gradient is its duplicates
// summed in the order of Note [Blocked duplicate sums] and the row is updated once. See Note
// [Sparse SGD] in ops/sgd_cpu.cpp.
template <class S, bool kM, bool kN, bool kF, bool kMax, bool kS, bool kSeq, bool kRound>
__global__ void __launch_bounds__(kSgdWarpsPerBlock * 32)
    sgd_sparse_kernel(S* __restrict__ param, S* __restrict__ buf,
                      const int64_t* __restrict__ rows, const DuplicateSums<S> d,
                      int64_t num_unique, const math::SgdCoeffs<mta::opmath_t<S>> c) {
  using T = mta::opmath_t<S>;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * kSgdWarpsPerBlock + threadIdx.x / 32;
  if (u >= num_unique) return;
  const int lane = threadIdx.x % 32;
  const int64_t width = d.width;
  S* prow = param + rows[u] * width;
  S* brow = kM ? buf + rows[u] * width : nullptr;
  for (int64_t jb = 0; jb < width; jb += 32 * kCols) {
    if (kSeq) {
      S p[kCols];
#pragma unroll
      for (int t = 0; t < kCols; ++t) {
        const int64_t j = jb + lane + 32 * t;
        p[t] = j < width ? prow[j] : S(0);
      }
      const int64_t k1 = d.offsets[u + 1];
      for (int64_t k = d.offsets[u]; k < k1; ++k) {
        const S* vrow = d.values + d.order[k] * width;
#pragma unroll
        for (int t = 0; t < kCols; ++t) {
          const int64_t j = jb + lane + 32 * t;
          if (j >= width) continue;
          T pv = mta::load_op<S>(p[t]), dummy = pv;
          if (kRound) {
            math::sgd_plain_rounded<kMax, kS>(pv, mta::load_op<S>(vrow[j]), c);
          } else {
            math::sgd_step<false, false, false, kMax, kS>(pv, mta::load_op<S>(vrow[j]), dummy, c);
          }
          p[t] = mta::store_op<S>(pv);
        }
      }
#pragma unroll
      for (int t = 0; t < kCols; ++t) {
        const int64_t j = jb + lane + 32 * t;
        if (j < width) prow[j] = p[t];
      }
    } else {
      T g[kCols];
      row_gradient(d, u, jb + lane, g);
#pragma unroll
      for (int t = 0; t < kCols; ++t) {
        const int64_t j = jb + lane + 32 * t;
        if (j >= width) continue;
        T p = mta::load_op<S>(prow[j]);
        T b = (kM && !kF) ? mta::load_op<S>(brow[j]) : p;
        math::sgd_step<kM, kN, kF, kMax, kS>(p, g[t], b, c);
        prow[j] = mta::store_op<S>(p);
        if (kM) brow[j] = mta::store_op<S>(b);
      }
    }
  }
}

// `sum_first`, `round_product`: plain SGD's path (cpu::PlainSparse kSumFirst, kRoundProduct;
// ops::aten_plain_sparse picks it as for the CPU op); `g` planned with block sums unless plain
// SGD applies the entries in turn.
template <class S>
void launch_sparse(const at::Tensor& param, const at::Tensor& buf, const at::Tensor& values,
                   const DeviceRowGroups& g, int64_t width,
                   const math::SgdCoeffs<mta::opmath_t<S>>& c, bool momentum, bool nesterov,
                   bool first, bool maximize, bool scale, bool sum_first, bool round_product) {
  const bool seq = !momentum && !c.has_weight_decay && !sum_first;
  const bool round = seq && round_product;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;  // block sums of hot rows: alive until the update is queued
  const DuplicateSums<S> d =
      duplicate_sums<S>(values, g, width, partials, /*sum_blocks=*/!seq);  // plain SGD sums none
  const int64_t blocks = (g.num_unique + kSgdWarpsPerBlock - 1) / kSgdWarpsPerBlock;
  S* pp = static_cast<S*>(param.data_ptr());
  S* bp = momentum ? static_cast<S*>(buf.data_ptr()) : nullptr;
  const int64_t* rp = g.rows.data_ptr<int64_t>();
  math::sgd_flag_switch(momentum, nesterov, first, maximize, scale, [&](auto m, auto n, auto f,
                                                                   auto mx, auto s) {
    constexpr bool kM = decltype(m)::value;
    PYOPTIM_BOOL_SWITCH(seq, kSeq, [&] {
      PYOPTIM_BOOL_SWITCH(round, kRound, [&] {
        if constexpr ((kSeq && kM) || (kRound && !kSeq)) {
          return;  // unreachable: seq implies no momentum, round implies seq
        } else {
          sgd_sparse_kernel<S, kM, decltype(n)::value, decltype(f)::value, decltype(mx)::value,
                            decltype(s)::value, kSeq, kRound>
              <<<static_cast<unsigned>(blocks), kSgdWarpsPerBlock * 32, 0, stream>>>(
                  pp, bp, rp, d, g.num_unique, c);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  });
}

}  // namespace cuda
}  // namespace pyoptim
