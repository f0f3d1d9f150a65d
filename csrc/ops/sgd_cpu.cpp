// pyoptim::sgd_ and pyoptim::sgd_sparse_ on CPU: validate everything, then one parallel region.
//
// Note [Sparse SGD]
// A sparse COO gradient (nn.Embedding / nn.EmbeddingBag with sparse=True: uncoalesced, any
// order, duplicate rows) updates the param LAZILY: only the rows r present in this step's grad
// are touched. For each such row, with g_r the sum of its duplicate value rows (summed left to
// right in position order, in blocks: Notes [Sparse rows: one deterministic pass] and
// [Blocked duplicate sums]):
//     g_r = -g_r                                  if maximize
//     g_r = g_r + weight_decay * p_r              (weight decay only on present rows)
//     b_r = g_r                                   on the buffer's first step (is_first_step)
//     b_r = momentum * b_r + (1 - dampening) * g_r  otherwise
//     g_r = g_r + momentum * b_r  (nesterov)  or  g_r = b_r
//     p_r = p_r - lr * g_r
// Rows absent from the grad keep their param and buffer unchanged (no decay, no momentum
// drift). This is the same math function as the dense kernel, applied to the present rows only.
// Without momentum and weight decay (plain SGD) each duplicate row is instead applied in turn,
// p_r = p_r - lr * v_k, which is exactly what torch's `param.add_(grad, alpha=-lr)` computes,
// so plain sparse SGD gives torch's bits. Rows are independent, each is updated by one thread
// in a fixed order, so the result does not depend on the thread count.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/parallel.h"
#include "ops/sparse_rows.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/sgd.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.sgd_";
constexpr const char* kSparseOp = "pyoptim.sgd_sparse_";

struct SgdItem {
  at::Tensor param, grad, buf;  // work tensors (see AdamItem in adam_cpu.cpp)
  cpu::SgdPtrs ptrs;
  at::ScalarType dtype;
};

bool same_dense_layout(const at::Tensor& p, const at::Tensor& g, const at::Tensor& b) {
  if (!p.is_non_overlapping_and_dense()) return false;
  if (g.strides() != p.strides()) return false;
  return !b.defined() || b.strides() == p.strides();
}

// Hyper-parameter checks shared by both ops (torch.optim.SGD's messages).
double check_hyper(double lr, double momentum, double dampening, double weight_decay,
                   bool nesterov, const std::optional<at::Tensor>& lr_tensor) {
  if (lr_tensor.has_value()) lr = ops::scalar_value(*lr_tensor, "lr");
  TORCH_CHECK_VALUE(lr >= 0.0, "Invalid learning rate: ", lr);
  TORCH_CHECK_VALUE(momentum >= 0.0, "Invalid momentum value: ", momentum);
  TORCH_CHECK_VALUE(weight_decay >= 0.0, "Invalid weight_decay value: ", weight_decay);
  TORCH_CHECK_VALUE(!nesterov || (momentum > 0.0 && dampening == 0.0),
                    "Nesterov momentum requires a momentum and zero dampening");
  return lr;
}

void check_param(const char* op, const at::Tensor& p, size_t i) {
  TORCH_CHECK_VALUE(p.defined(), op, ": params[", i, "] is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, op, ": params[", i, "] must be a dense tensor");
  TORCH_CHECK(p.device().is_cpu(), op, ": params[", i, "] is on ", p.device(),
              "; this is the CPU kernel");
  TORCH_CHECK_TYPE(ops::is_supported_float(p.scalar_type()), op, ": params[", i,
                   "] has dtype ", p.scalar_type(),
                   "; supported: float32, float64, bfloat16, float16 (complex params are "
                   "passed as real views)");
}

void sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             double lr, double momentum, double dampening, double weight_decay, bool nesterov,
             bool maximize, bool is_first_step, const std::optional<at::Tensor>& lr_tensor,
             const std::optional<at::Tensor>& grad_scale,
             const std::optional<at::Tensor>& found_inf) {
  // ---- 1. validate everything; nothing is written in this part --------------------------
  lr = check_hyper(lr, momentum, dampening, weight_decay, nesterov, lr_tensor);
  const bool has_momentum = momentum != 0.0;
  const size_t n = params.size();
  ops::check_list_size(kOp, grads, n, "grads");
  if (has_momentum) ops::check_list_size(kOp, momentum_buffers, n, "momentum_buffers");

  ops::WriteSet writes;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    check_param(kOp, p, i);
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

  double scale = 1.0;
  if (grad_scale.has_value()) scale = ops::scalar_value(*grad_scale, "grad_scale");
  if (found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0) {
    return;  // GradScaler found inf/NaN grads: skip the step
  }

  // ---- 2. plan ------------------------------------------------------------------------------
  std::vector<SgdItem> items(n);
  ops::ItemSplit split;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    SgdItem& it = items[i];
    const at::Tensor& buf = has_momentum ? momentum_buffers[i] : none;
    if (same_dense_layout(params[i], grads[i], buf)) {
      it.param = params[i];
      it.grad = grads[i];
      it.buf = buf;
    } else {  // layouts differ: work on row-major copies (only those that are not already)
      it.param = params[i].contiguous();
      it.grad = grads[i].contiguous();
      // a first-step buffer is written before it is read: no need to copy its contents
      if (has_momentum) it.buf = is_first_step ? at::empty_like(it.param) : buf.contiguous();
    }
    it.dtype = params[i].scalar_type();
    it.ptrs = cpu::SgdPtrs{it.param.data_ptr(), it.grad.data_ptr(),
                           has_momentum ? it.buf.data_ptr() : nullptr};
    split.add(params[i].numel(), params[i].element_size());
  }
  const auto cf = math::make_sgd_coeffs<float>(lr, momentum, dampening, weight_decay, scale);
  const auto cd = math::make_sgd_coeffs<double>(lr, momentum, dampening, weight_decay, scale);

  // ---- 3. update: one parallel region over every tensor -----------------------------------
  const cpu::SgdKernels& k = cpu::current_kernels().sgd;
  const cpu::SgdFlags flags{has_momentum, nesterov, is_first_step, maximize,
                            grad_scale.has_value()};
  split.run([&](size_t i, int64_t begin, int64_t end) {
    const SgdItem& it = items[i];
    switch (it.dtype) {
      case at::kFloat: k.f32(it.ptrs, begin, end, cf, flags); break;
      case at::kDouble: k.f64(it.ptrs, begin, end, cd, flags); break;
      case at::kBFloat16: k.bf16(it.ptrs, begin, end, cf, flags); break;
      case at::kHalf: k.f16(it.ptrs, begin, end, cf, flags); break;
      default: break;  // unreachable: rejected above
    }
  });

  // ---- 4. copy back what was updated in a copy ----------------------------------------------
  for (size_t i = 0; i < n; ++i) {
    SgdItem& it = items[i];
    if (!it.param.is_same(params[i])) params[i].copy_(it.param);
    if (has_momentum && !it.buf.is_same(momentum_buffers[i])) momentum_buffers[i].copy_(it.buf);
  }
}

void sgd_sparse_cpu(const at::Tensor& param, const at::Tensor& grad,
                    const std::optional<at::Tensor>& momentum_buffer, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize,
                    bool is_first_step, const std::optional<at::Tensor>& lr_tensor,
                    const std::optional<at::Tensor>& grad_scale,
                    const std::optional<at::Tensor>& found_inf) {
  // ---- 1. validate everything; nothing is written in this part --------------------------
  lr = check_hyper(lr, momentum, dampening, weight_decay, nesterov, lr_tensor);
  const bool has_momentum = momentum != 0.0;
  check_param(kSparseOp, param, 0);
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

  const at::IntArrayRef sizes = param.sizes();
  const int64_t num_rows = coo.num_rows, width = coo.width;
  const int64_t nnz = coo.nnz;
  // per-thread buffers, refilled by every call (Note [Grouping buffers] in ops/sparse_rows.h)
  static thread_local std::vector<int64_t> lin_storage;
  static thread_local ops::RowGroups groups;
  const int64_t* lin = ops::linear_rows(kSparseOp, coo, sizes, 0, lin_storage);
  if (ops::check_only()) {  // Note [Check-only calls]: the index checks, no grouping
    if (nnz > 0) ops::check_rows(lin, nnz, num_rows, kSparseOp);
    return;
  }
  ops::group_rows(lin, nnz, num_rows, kSparseOp, groups);

  double scale = 1.0;
  if (grad_scale.has_value()) scale = ops::scalar_value(*grad_scale, "grad_scale");
  if (found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0) return;
  if (groups.num_unique() == 0 || width == 0) return;

  // ---- 2. plan ------------------------------------------------------------------------------
  const at::Tensor values = grad._values().contiguous();
  at::Tensor wp = param.is_contiguous() ? param : param.contiguous();
  at::Tensor wb = (!has_momentum || buf.is_contiguous()) ? buf : buf.contiguous();
  const cpu::SgdSparsePtrs ptrs{wp.data_ptr(),        values.data_ptr(),
                                has_momentum ? wb.data_ptr() : nullptr,
                                groups.rows.data(),   groups.offsets.data(),
                                groups.order.data(),  width,
                                lin,                  nnz};
  const auto cf = math::make_sgd_coeffs<float>(lr, momentum, dampening, weight_decay, scale);
  const auto cd = math::make_sgd_coeffs<double>(lr, momentum, dampening, weight_decay, scale);
  const cpu::SgdFlags flags{has_momentum, nesterov, is_first_step, maximize,
                            grad_scale.has_value()};
  const cpu::SgdKernels& k = cpu::current_kernels().sgd;
  const at::ScalarType dtype = param.scalar_type();

  // ---- 3. update: parallel over unique rows, split by cost ----------------------------------
  ops::parallel_over_rows(groups, width, [&](int64_t ub, int64_t ue) {
    if (dtype == at::kDouble) {
      std::vector<double> scratch(2 * width);  // see SgdKernels
      k.sparse_f64(ptrs, ub, ue, cd, flags, scratch.data());
      return;
    }
    std::vector<float> scratch(2 * width);
    switch (dtype) {
      case at::kFloat: k.sparse_f32(ptrs, ub, ue, cf, flags, scratch.data()); break;
      case at::kBFloat16: k.sparse_bf16(ptrs, ub, ue, cf, flags, scratch.data()); break;
      case at::kHalf: k.sparse_f16(ptrs, ub, ue, cf, flags, scratch.data()); break;
      default: break;  // unreachable: rejected above
    }
  });

  // ---- 4. copy back what was updated in a copy ----------------------------------------------
  if (!wp.is_same(param)) param.copy_(wp);
  if (has_momentum && !wb.is_same(buf)) buf.copy_(wb);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) {
  m.impl("sgd_", &sgd_cpu);
  m.impl("sgd_sparse_", &sgd_sparse_cpu);  // reached with a dense grad: raises ValueError
}

// A sparse grad carries the SparseCPU key, which the dispatcher picks over CPU.
TORCH_LIBRARY_IMPL(pyoptim, SparseCPU, m) { m.impl("sgd_sparse_", &sgd_sparse_cpu); }

}  // namespace pyoptim
