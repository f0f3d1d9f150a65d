// pyoptim::sgd_ and pyoptim::sgd_sparse_ on CUDA. The same semantics as ops/sgd_cpu.cpp (read
// its Notes [Sparse SGD]) and the same math (math/sgd.h, fma via __fma_rn / __fmaf_rn), so
// float32 / float64 results equal the CPU kernel's bitwise.
//
// Dense: validate, then one multi_tensor_apply per dtype. lr_tensor, grad_scale and found_inf on
// the GPU are read by the kernel (no host sync; a step can be captured in a CUDA graph), so a
// device lr_tensor is not range-checked. Momentum 0 reads and writes no buffer (depth 2).
// Sparse: validate (one sync for the index range), group rows (cuda/sparse_rows.cuh), then one
// warp per unique row. The sparse op reads its scalars on the host: it syncs anyway.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>
#include <optional>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sparse_rows.cuh"
#include "ops/checks.h"
#include "ops/sparse_rows.h"
#include "pyoptim/math/sgd.h"

namespace pyoptim {
namespace cuda {
namespace {

constexpr const char* kOp = "pyoptim.sgd_";
constexpr const char* kSparseOp = "pyoptim.sgd_sparse_";

template <class T>
struct SgdArgs {
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
  SgdArgs<T> a;

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

// sgd_switch of cpu/sgd_impl.h: runtime flags to template parameters; with momentum off,
// nesterov and the first-step rule are unused and fixed to false.
template <class F>
void sgd_flags_switch(bool momentum, bool nesterov, bool first, bool maximize, bool scale,
                      const F& f) {
  PYOPTIM_BOOL_SWITCH(maximize, kMax, [&] {
    PYOPTIM_BOOL_SWITCH(scale, kS, [&] {
      if (!momentum) {
        f(std::integral_constant<bool, false>(), std::integral_constant<bool, false>(),
          std::integral_constant<bool, false>(), std::integral_constant<bool, kMax>(),
          std::integral_constant<bool, kS>());
        return;
      }
      PYOPTIM_BOOL_SWITCH(nesterov, kN, [&] {
        PYOPTIM_BOOL_SWITCH(first, kF, [&] {
          f(std::integral_constant<bool, true>(), std::integral_constant<bool, kN>(),
            std::integral_constant<bool, kF>(), std::integral_constant<bool, kMax>(),
            std::integral_constant<bool, kS>());
        });
      });
    });
  });
}

struct SgdWork {
  void* addr[3];
  int64_t numel;
};

template <class S>
void launch_dense(const std::vector<SgdWork>& items, const SgdArgs<mta::opmath_t<S>>& args,
                  bool momentum, bool nesterov, bool first, bool maximize, bool scale) {
  sgd_flags_switch(momentum, nesterov, first, maximize, scale, [&](auto m, auto n, auto f,
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

// torch.optim.SGD's messages; lr is checked where its value is known on the host.
void check_hyper(double lr, bool check_lr, double momentum, double dampening,
                 double weight_decay, bool nesterov) {
  if (check_lr) TORCH_CHECK_VALUE(lr >= 0.0, "Invalid learning rate: ", lr);
  TORCH_CHECK_VALUE(momentum >= 0.0, "Invalid momentum value: ", momentum);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "Invalid weight_decay value: ", weight_decay);
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0.0 && dampening == 0.0),
                    "Nesterov momentum requires a momentum and zero dampening");
}

void check_cuda_param(const char* op, const at::Tensor& p, size_t i, c10::Device dev) {
  TORCH_CHECK_VALUE(p.defined(), op, ": params[", i, "] is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i, "] must be a dense tensor");
  TORCH_CHECK(p.is_cuda(), op, ": params[", i, "] is on ", p.device(),
              "; this is the CUDA kernel (all tensors of one call on one device)");
  TORCH_CHECK(p.device() == dev, op, ": params[", i, "] is on ", p.device(),
              " but params[0] is on ", dev, "; expected all tensors to be on the same device");
  TORCH_CHECK_TYPE(ops::is_supported_float(p.scalar_type()), op, ": params[", i, "] has dtype ",
                   p.scalar_type(),
                   "; supported: float32, float64, bfloat16, float16 (complex params are "
                   "passed as real views)");
}

void sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
              double lr, double momentum, double dampening, double weight_decay, bool nesterov,
              bool maximize, bool is_first_step, const std::optional<at::Tensor>& lr_tensor,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf) {
  // ---- 1. validate everything; nothing is written in this part --------------------------
  const size_t n = params.size();
  c10::Device dev(c10::kCUDA);
  if (n > 0 && params[0].defined()) dev = params[0].device();
  ops::check_scalar_arg(kOp, lr_tensor, "lr_tensor", dev);
  ops::check_scalar_arg(kOp, grad_scale, "grad_scale", dev);
  ops::check_scalar_arg(kOp, found_inf, "found_inf", dev);
  const bool lr_on_device = lr_tensor.has_value() && !lr_tensor->device().is_cpu();
  if (lr_tensor.has_value() && !lr_on_device) lr = ops::scalar_value(*lr_tensor, "lr");
  check_hyper(lr, !lr_on_device, momentum, dampening, weight_decay, nesterov);
  const bool has_momentum = momentum != 0.0;
  ops::check_list_size(kOp, grads, n, "grads");
  if (has_momentum) ops::check_list_size(kOp, momentum_buffers, n, "momentum_buffers");

  ops::WriteSet writes;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    check_cuda_param(kOp, p, i, dev);
    TORCH_CHECK_VALUE(!grads[i].defined() || grads[i].layout() == at::kStrided, kOp, ": grads[",
                      i, "] is sparse; use pyoptim.sgd_sparse_ for sparse gradients");
    ops::check_like_param(kOp, p, grads[i], "grads", i);
    writes.add(p, "params", i);
    if (has_momentum) {
      ops::check_like_param(kOp, p, momentum_buffers[i], "momentum_buffers", i);
      writes.add(momentum_buffers[i], "momentum_buffers", i);
    }
  }
  writes.check(kOp);
  if (ops::check_only()) return;  // Note [Check-only calls]

  const bool scale_on_device = grad_scale.has_value() && !grad_scale->device().is_cpu();
  const bool inf_on_device = found_inf.has_value() && !found_inf->device().is_cpu();
  double scale = 1.0;
  if (grad_scale.has_value() && !scale_on_device) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
  }
  if (found_inf.has_value() && !inf_on_device &&
      ops::scalar_value(*found_inf, "found_inf") != 0.0) {
    return;  // GradScaler found inf/NaN grads: skip the step
  }
  if (n == 0) return;

  // ---- 2. plan: pointers (or contiguous copies), grouped by dtype -------------------------
  const c10::cuda::CUDAGuard guard(dev);
  std::vector<at::Tensor> keep_alive;
  mta::ScalarRef lr_ref, scale_ref, inf_ref;
  if (lr_on_device) lr_ref = mta::device_scalar(*lr_tensor, keep_alive);
  if (scale_on_device) scale_ref = mta::device_scalar(*grad_scale, keep_alive);
  if (inf_on_device) inf_ref = mta::device_scalar(*found_inf, keep_alive);

  struct Work {
    at::Tensor param, grad, buf;
  };
  std::vector<Work> work(n);
  std::map<at::ScalarType, std::vector<SgdWork>> groups;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    const at::Tensor& buf = has_momentum ? momentum_buffers[i] : none;
    if (ops::same_dense_layout(params[i], {&grads[i], &buf})) {
      w = Work{params[i], grads[i], buf};
    } else {  // layouts differ: work on row-major copies (only those that are not already)
      w.param = params[i].contiguous();
      w.grad = grads[i].contiguous();
      // a first-step buffer is written before it is read: no need to copy its contents
      if (has_momentum) w.buf = is_first_step ? at::empty_like(w.param) : buf.contiguous();
    }
    groups[params[i].scalar_type()].push_back(
        SgdWork{{w.param.data_ptr(), w.grad.data_ptr(), has_momentum ? w.buf.data_ptr() : nullptr},
                params[i].numel()});
  }

  // ---- 3. update: one multi_tensor_apply per dtype ----------------------------------------
  const bool has_scale = grad_scale.has_value();
  auto args_for = [&](auto zero) {
    using T = decltype(zero);
    SgdArgs<T> a{};
    a.coeffs = math::make_sgd_coeffs<T>(lr, momentum, dampening, weight_decay, scale);
    a.momentum = momentum;
    a.dampening = dampening;
    a.weight_decay = weight_decay;
    a.scale = scale;
    a.lr_dev = lr_ref;
    a.scale_dev = scale_ref;
    a.found_inf = inf_ref;
    return a;
  };
  for (const auto& group : groups) {
    const auto& items = group.second;
    mta::dispatch_param_dtype(group.first, [&](auto zero) {
      using S = decltype(zero);
      launch_dense<S>(items, args_for(mta::opmath_t<S>{}), has_momentum, nesterov,
                      is_first_step, maximize, has_scale);
    });
  }

  // ---- 4. copy back what was updated in a copy ----------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    Work& w = work[i];
    if (!w.param.is_same(params[i])) params[i].copy_(w.param);
    if (has_momentum && !w.buf.is_same(momentum_buffers[i])) momentum_buffers[i].copy_(w.buf);
  }
}

// ---- sparse ----------------------------------------------------------------------------------
constexpr int kWarpsPerBlock = 4;

// One warp per unique row u; each lane keeps kCols columns of the row (cuda/sparse_rows.cuh).
// kSeq (plain SGD): each value row is applied in turn, in position order, rounded to S after
// each (as the CPU applies and stores them); else the row's gradient is its duplicates summed
// in the order of Note [Blocked duplicate sums] and the row is updated once. See Note [Sparse
// SGD] in ops/sgd_cpu.cpp.
template <class S, bool kM, bool kN, bool kF, bool kMax, bool kS, bool kSeq>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    sgd_sparse_kernel(S* __restrict__ param, S* __restrict__ buf,
                      const int64_t* __restrict__ rows, const DuplicateSums<S> d,
                      int64_t num_unique, const math::SgdCoeffs<mta::opmath_t<S>> c) {
  using T = mta::opmath_t<S>;
  const int64_t u = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
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
          math::sgd_step<false, false, false, kMax, kS>(pv, mta::load_op<S>(vrow[j]), dummy, c);
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

template <class S>
void launch_sparse(const at::Tensor& param, const at::Tensor& buf, const at::Tensor& values,
                   const DeviceRowGroups& g, int64_t width,
                   const math::SgdCoeffs<mta::opmath_t<S>>& c, bool momentum, bool nesterov,
                   bool first, bool maximize, bool scale) {
  const bool seq = !momentum && !c.has_weight_decay;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor partials;  // block sums of hot rows: alive until the update is queued
  const DuplicateSums<S> d =
      duplicate_sums<S>(values, g, width, partials, /*sum_blocks=*/!seq);  // plain SGD sums none
  const int64_t blocks = (g.num_unique + kWarpsPerBlock - 1) / kWarpsPerBlock;
  S* pp = static_cast<S*>(param.data_ptr());
  S* bp = momentum ? static_cast<S*>(buf.data_ptr()) : nullptr;
  const int64_t* rp = g.rows.data_ptr<int64_t>();
  sgd_flags_switch(momentum, nesterov, first, maximize, scale, [&](auto m, auto n, auto f,
                                                                   auto mx, auto s) {
    constexpr bool kM = decltype(m)::value;
    PYOPTIM_BOOL_SWITCH(seq, kSeq, [&] {
      if constexpr (kSeq && kM) {
        return;  // unreachable: seq implies no momentum
      } else {
        sgd_sparse_kernel<S, kM, decltype(n)::value, decltype(f)::value, decltype(mx)::value,
                          decltype(s)::value, kSeq>
            <<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
                pp, bp, rp, d, g.num_unique, c);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
}

void sgd_sparse_cuda(const at::Tensor& param, const at::Tensor& grad,
                     const std::optional<at::Tensor>& momentum_buffer, double lr,
                     double momentum, double dampening, double weight_decay, bool nesterov,
                     bool maximize, bool is_first_step,
                     const std::optional<at::Tensor>& lr_tensor,
                     const std::optional<at::Tensor>& grad_scale,
                     const std::optional<at::Tensor>& found_inf) {
  // ---- 1. validate everything; nothing is written in this part --------------------------
  TORCH_CHECK_VALUE(param.defined(), kSparseOp, ": params[0] is undefined");
  const c10::Device dev = param.device();
  check_cuda_param(kSparseOp, param, 0, dev);
  ops::check_scalar_arg(kSparseOp, lr_tensor, "lr_tensor", dev);
  ops::check_scalar_arg(kSparseOp, grad_scale, "grad_scale", dev);
  ops::check_scalar_arg(kSparseOp, found_inf, "found_inf", dev);
  if (lr_tensor.has_value()) lr = ops::scalar_value(*lr_tensor, "lr");
  check_hyper(lr, true, momentum, dampening, weight_decay, nesterov);
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK_VALUE(grad.defined() && grad.layout() == at::kSparse, kSparseOp,
                    ": expected a sparse COO gradient, got ",
                    grad.defined() ? c10::str(grad.layout()) : std::string("an undefined tensor"));
  const ops::CooGrad coo = ops::check_coo_grad(kSparseOp, param, grad, 0);
  const int64_t sd = coo.sparse_dim;
  TORCH_CHECK_VALUE(sd >= 1, kSparseOp, ": the sparse gradient has no sparse dimension");
  at::Tensor buf;
  ops::WriteSet writes;
  writes.add(param, "params", 0);
  if (has_momentum) {
    TORCH_CHECK_VALUE(momentum_buffer.has_value() && momentum_buffer->defined(), kSparseOp,
                      ": momentum != 0 needs a momentum_buffer");
    buf = *momentum_buffer;
    ops::check_like_param(kSparseOp, param, buf, "momentum_buffers", 0);
    writes.add(buf, "momentum_buffers", 0);
  }
  writes.check(kSparseOp);

  const c10::cuda::CUDAGuard guard(dev);
  const at::IntArrayRef sizes = param.sizes();
  const int64_t width = coo.width;
  if (ops::check_only()) {  // Note [Check-only calls]: the index checks, no grouping
    if (coo.nnz > 0) check_indices_cuda(coo.indices, sizes, kSparseOp, "the sparse gradient");
    return;
  }
  const DeviceRowGroups groups =
      group_rows_cuda(grad._indices(), sizes, kSparseOp, "the sparse gradient",
                      /*block_sums=*/has_momentum || weight_decay != 0.0);  // else plain SGD

  double scale = 1.0;
  if (grad_scale.has_value()) scale = ops::scalar_value(*grad_scale, "grad_scale");
  if (found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0) return;
  if (groups.num_unique == 0 || width == 0) return;

  // ---- 2. plan ------------------------------------------------------------------------------
  const at::Tensor values = grad._values().contiguous();
  at::Tensor wp = param.is_contiguous() ? param : param.contiguous();
  at::Tensor wb = (!has_momentum || buf.is_contiguous()) ? buf : buf.contiguous();

  // ---- 3. update: one warp per unique row ---------------------------------------------------
  const bool has_scale = grad_scale.has_value();
  mta::dispatch_param_dtype(param.scalar_type(), [&](auto zero) {
    using S = decltype(zero);
    launch_sparse<S>(wp, wb, values, groups, width,
                     math::make_sgd_coeffs<mta::opmath_t<S>>(lr, momentum, dampening,
                                                             weight_decay, scale),
                     has_momentum, nesterov, is_first_step, maximize, has_scale);
  });

  // ---- 4. copy back what was updated in a copy ----------------------------------------------
  if (!wp.is_same(param)) param.copy_(wp);
  if (has_momentum && !wb.is_same(buf)) buf.copy_(wb);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CUDA, m) {
  m.impl("sgd_", &sgd_cuda);
  m.impl("sgd_sparse_", &sgd_sparse_cuda);  // reached with a dense grad: raises ValueError
}

// A sparse grad carries the SparseCUDA key, which the dispatcher picks over CUDA.
TORCH_LIBRARY_IMPL(pyoptim, SparseCUDA, m) { m.impl("sgd_sparse_", &sgd_sparse_cuda); }

}  // namespace cuda
}  // namespace pyoptim
