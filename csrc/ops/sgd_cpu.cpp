// pyoptim::sgd_ on CPU: validate everything (sparse gradients' rows grouped while validating),
// then one parallel region over every dense tensor and one over each sparse gradient's rows.
//
// Note [Sparse SGD]
// A sparse COO gradient (nn.Embedding / nn.EmbeddingBag with sparse=True: uncoalesced, any
// order, duplicate rows) updates the param LAZILY: only the rows r present in this step's grad
// are touched. For each such row, with g_r the sum of its duplicate value rows (summed left to
// right in position order, in blocks: Notes [Sparse rows: one deterministic pass] and
// [Blocked duplicate sums]):
//     g_r = -g_r                                  if maximize
//     g_r = g_r + weight_decay * p_r              (weight decay only on present rows)
//     b_r = g_r                                   on the buffer's first step (first_step)
//     b_r = momentum * b_r + (1 - dampening) * g_r  otherwise
//     g_r = g_r + momentum * b_r  (nesterov)  or  g_r = b_r
//     p_r = p_r - lr * g_r
// Rows absent from the grad keep their param and buffer unchanged (no decay, no momentum
// drift). This is the same math function as the dense kernel, applied to the present rows only.
// Without momentum and weight decay (plain SGD) each duplicate row is instead applied in turn,
// p_r = p_r - lr * v_k, which is exactly what torch's `param.add_(grad, alpha=-lr)` computes,
// so plain sparse SGD gives torch's bits: with one fused multiply-add per element, as ATen's
// kernels for an uncoalesced gradient or one with dense dims, and with the product rounded first
// (math::sgd_plain_rounded) for a gradient flagged coalesced whose values have no dense dims,
// which ATen's CPU add_ takes by its non-hybrid path (torch 2.14). Those two paths need a
// contiguous param and contiguous values (of the grad as add_ sees it: negated under maximize).
// Otherwise, and for an uncoalesced gradient with no sparse dim, ATen's add_ coalesces the
// gradient first and adds each summed row with one fused multiply-add: so does plain SGD here
// (PlainSparse::kSumFirst: the duplicates summed as above, then the update). Rows are
// independent, each is updated by one thread in a fixed order, so the result does not depend on
// the thread count. A gradient with no sparse dim (a 0-dim param's) is one row: the whole param.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/checks.h"
#include "ops/dtypes.h"
#include "ops/parallel.h"
#include "ops/sgd_args.h"
#include "pyoptim/math/quantize.h"
#include "ops/sparse_rows.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/sgd.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.sgd_";

struct SgdItem {
  at::Tensor param, grad, buf, master, comp;  // work tensors: the user's, or row-major copies
  cpu::SgdPtrs ptrs;
  cpu::SgdFlags flags;
};

struct SparseItem {
  size_t index;
  ops::RowGroups* groups;  // this thread's buffers (Note [Grouping buffers] in ops/sparse_rows.h)
  const int64_t* lin;      // each entry's row, in gradient order
  at::Tensor param, buf, values;  // work tensors
  cpu::SgdFlags flags;
  cpu::PlainSparse plain;
};

// Coefficients per (group, param dtype), narrowed with torch's overflow check for that dtype
// (Note [Narrowing coefficients] in math/scalar_ops.h), computed while validating.
class SgdCoeffTable {
 public:
  int32_t get(size_t group, at::ScalarType dtype, const ops::SgdGroup& g, double lr,
              double scale) {
    for (size_t k = 0; k < keys_.size(); ++k) {
      if (keys_[k].first == group && keys_[k].second == dtype) return static_cast<int32_t>(k);
    }
    keys_.emplace_back(group, dtype);
    f_.emplace_back();
    d_.emplace_back();
    ops::dispatch_param_dtype(dtype, [&](auto st) {
      using S = decltype(st);
      using T = ops::opmath_t<S>;
      const auto c = math::make_sgd_coeffs<T>(lr, g.momentum, g.dampening, g.weight_decay, scale,
                                              ops::CheckedNarrow<T, S>());
      if constexpr (std::is_same<T, double>::value) {
        d_.back() = c;
      } else {
        f_.back() = c;
      }
    });
    return static_cast<int32_t>(keys_.size() - 1);
  }
  const math::SgdCoeffs<float>& f(int32_t k) const { return f_[k]; }
  const math::SgdCoeffs<double>& d(int32_t k) const { return d_[k]; }

 private:
  std::vector<std::pair<size_t, at::ScalarType>> keys_;
  std::vector<math::SgdCoeffs<float>> f_;
  std::vector<math::SgdCoeffs<double>> d_;
};

void sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             at::IntArrayRef group_sizes, at::ArrayRef<double> hyper, const c10::List<bool>& flags,
             const c10::List<bool>& first_step,
             const c10::List<std::optional<at::Tensor>>& lr_tensors,
             const std::optional<at::Tensor>& grad_scale,
             const std::optional<at::Tensor>& found_inf, bool validate_only,
             const std::optional<at::TensorList>& master_list,
             const std::optional<at::TensorList>& seed_list,
             const std::optional<at::TensorList>& scale_list,
             const std::optional<at::TensorList>& comp_list) {
  std::vector<at::Tensor> own_grads;  // Note [Grads read by the op] in ops/checks.h
  grads = ops::grads_of_params(kOp, params, grads, own_grads);
  const at::TensorList master_params = master_list.value_or(at::TensorList());
  const at::TensorList sr_seeds = seed_list.value_or(at::TensorList());
  const at::TensorList buffer_scales = scale_list.value_or(at::TensorList());
  const at::TensorList kahan_comps = comp_list.value_or(at::TensorList());
  // ---- 1. validate everything (sparse rows grouped); nothing is written here --------------
  ops::WriteSet writes;
  const ops::SgdCall call = ops::check_sgd_call(
      kOp, c10::DeviceType::CPU, params, grads, momentum_buffers, group_sizes, hyper, flags,
      first_step, lr_tensors, grad_scale, found_inf, master_params, sr_seeds, buffer_scales,
      kahan_comps, writes);
  double scale = 1.0;
  if (grad_scale.has_value()) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
    ops::check_grad_scale(kOp, scale);
  }
  const bool skip = found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0;
  std::vector<double> group_lr(call.groups.size());
  for (size_t g = 0; g < call.groups.size(); ++g) {
    const ops::SgdGroup& grp = call.groups[g];
    group_lr[g] = grp.lr;
    if (grp.lr_tensor.has_value()) {
      group_lr[g] = ops::scalar_value(*grp.lr_tensor, "lr");
      TORCH_CHECK_VALUE(group_lr[g] >= 0.0, "Invalid learning rate: ", group_lr[g]);
    }
  }
  SgdCoeffTable coeffs;
  std::vector<int32_t> coeff_of(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const size_t g = call.group[i];
    // a master-weights param steps its float32 master: the coefficients of a float32 param
    coeff_of[i] = coeffs.get(g, call.master[i] >= 0 ? at::kFloat : params[i].scalar_type(),
                             call.groups[g], group_lr[g], scale);
  }
  const size_t n = params.size();
  // per-thread buffers, refilled by every call (Note [Grouping buffers] in ops/sparse_rows.h)
  static thread_local std::vector<ops::RowGroups> group_pool;
  static thread_local std::vector<std::vector<int64_t>> lin_pool;
  size_t num_sparse = 0;
  for (size_t i = 0; i < n; ++i) num_sparse += call.sparse[i].has_value();
  if (group_pool.size() < num_sparse) group_pool.resize(num_sparse);
  if (lin_pool.size() < num_sparse) lin_pool.resize(num_sparse);
  std::vector<SparseItem> sparse;
  sparse.reserve(num_sparse);
  for (size_t i = 0; i < n; ++i) {
    if (!call.sparse[i].has_value()) continue;
    const ops::CooGrad& coo = *call.sparse[i];
    const size_t k = sparse.size();
    const int64_t* lin = ops::linear_rows(kOp, coo, params[i].sizes(), i, lin_pool[k]);
    if (validate_only) {  // the index checks, no grouping
      if (coo.nnz > 0) ops::check_rows(lin, coo.nnz, coo.num_rows, kOp);
      continue;
    }
    ops::group_rows(lin, coo.nnz, coo.num_rows, kOp, group_pool[k]);
    sparse.push_back(SparseItem{i, &group_pool[k], lin, {}, {}, {}, {}});
  }
  writes.check(kOp);
  if (validate_only || skip) return;  // skip: GradScaler found inf/NaN grads
  grads = writes.unaliased_reads(grads, own_grads);  // Note [Exact overlap]

  // ---- 2. plan --------------------------------------------------------------------------------
  std::vector<SgdItem> items;
  std::vector<size_t> dense_index;
  ops::ItemSplit split;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    if (call.sparse[i].has_value()) continue;
    const ops::SgdGroup& grp = call.of(i);
    const at::Tensor& buf = call.buf[i] >= 0 ? momentum_buffers[call.buf[i]] : none;
    SgdItem it;
    it.flags = cpu::SgdFlags{grp.has_momentum(),    grp.nesterov,
                             call.first[i],         grp.maximize,
                             grad_scale.has_value(), grp.stochastic_rounding,
                             grp.states(),          grp.kahan};
    const at::Tensor& master = call.master[i] >= 0 ? master_params[call.master[i]] : none;
    const at::Tensor& comp = call.comp[i] >= 0 ? kahan_comps[call.comp[i]] : none;
    if (ops::same_dense_layout(params[i], {&grads[i], &buf, &master, &comp}, call.scale[i] >= 0)) {
      it.param = params[i];
      it.grad = grads[i];
      it.buf = buf;
      it.master = master;
      it.comp = comp;
    } else {  // layouts differ: work on copies in one layout (only of those not in it)
      // Note [Work layout] in ops/checks.h: the param's own where the walk order does not
      // matter (the stochastic modes key random bits by it; 8-bit states are row-major)
      const bool order = ops::param_work_order(
          params[i], call.seed[i] < 0 && it.flags.states == cpu::StateFormat::kParam);
      it.param = ops::in_work_layout(params[i], params[i], order);
      it.grad = ops::in_work_layout(grads[i], params[i], order);
      // a first-step buffer is written before it is read: no need to copy its contents
      it.buf = ops::in_work_layout(buf, params[i], order, /*copy=*/!call.first[i]);
      it.master = ops::in_work_layout(master, params[i], order);
      it.comp = ops::in_work_layout(comp, params[i], order);
    }
    it.ptrs = cpu::SgdPtrs{
        it.param.data_ptr(),
        it.grad.const_data_ptr(),
        it.buf.defined() ? it.buf.data_ptr() : nullptr,
        it.master.defined() ? it.master.data_ptr() : nullptr,
        call.seed[i] >= 0 ? static_cast<uint64_t>(*sr_seeds[call.seed[i]].const_data_ptr<int64_t>())
                          : 0,
        call.scale[i] >= 0 ? buffer_scales[call.scale[i]].data_ptr() : nullptr,
        it.comp.defined() ? it.comp.data_ptr() : nullptr};
    split.add(params[i].numel(), master.defined() ? 4 : params[i].element_size(),
              grp.q8_states ? math::kQ8Block : ops::ItemSplit::kAlign);
    items.push_back(std::move(it));
    dense_index.push_back(i);
  }
  for (SparseItem& s : sparse) {
    const size_t i = s.index;
    const ops::SgdGroup& grp = call.of(i);
    const at::Tensor& buf = call.buf[i] >= 0 ? momentum_buffers[call.buf[i]] : none;
    s.flags = cpu::SgdFlags{grp.has_momentum(),    grp.nesterov,
                            call.first[i],         grp.maximize,
                            grad_scale.has_value(), false,
                            cpu::StateFormat::kParam, false};  // (the modes take dense grads)
    s.plain = ops::aten_plain_sparse(params[i], *call.sparse[i], grp.maximize);
    s.values = writes.unaliased(call.sparse[i]->values);
    s.param = params[i].is_contiguous() ? params[i] : params[i].contiguous();
    s.buf = (!buf.defined() || buf.is_contiguous()) ? buf : buf.contiguous();
  }

  // ---- 3. update ------------------------------------------------------------------------------
  const cpu::SgdKernels& k = cpu::current_kernels().sgd;
  split.run([&](size_t j, int64_t begin, int64_t end) {
    const SgdItem& it = items[j];
    const int32_t c = coeff_of[dense_index[j]];
    if (it.master.defined()) {
      const auto fn = it.param.scalar_type() == at::kBFloat16 ? k.dense.bf16_master
                                                              : k.dense.f16_master;
      fn(it.ptrs, begin, end, coeffs.f(c), it.flags);
      return;
    }
    ops::dispatch_param_dtype(it.param.scalar_type(), [&](auto st) {
      using S = decltype(st);
      if constexpr (std::is_same<S, double>::value) {
        ops::cpu_kernel<S>(k.dense)(it.ptrs, begin, end, coeffs.d(c), it.flags);
      } else {
        ops::cpu_kernel<S>(k.dense)(it.ptrs, begin, end, coeffs.f(c), it.flags);
      }
    });
  });
  for (const SparseItem& s : sparse) {
    const ops::CooGrad& coo = *call.sparse[s.index];
    if (s.groups->num_unique() == 0 || coo.width == 0) continue;
    const int32_t c = coeff_of[s.index];
    const cpu::SgdSparsePtrs ptrs{s.param.data_ptr(),    s.values.const_data_ptr(),
                                  s.buf.defined() ? s.buf.data_ptr() : nullptr,
                                  s.groups->rows.data(), s.groups->offsets.data(),
                                  s.groups->order.data(), coo.width,
                                  s.lin,                 coo.nnz,
                                  s.plain};
    ops::parallel_over_rows(*s.groups, coo.width, [&](int64_t ub, int64_t ue) {
      ops::dispatch_param_dtype(s.param.scalar_type(), [&](auto st) {
        using S = decltype(st);
        using T = ops::opmath_t<S>;
        std::vector<T> scratch(2 * coo.width);  // see SgdKernels
        if constexpr (std::is_same<S, double>::value) {
          ops::cpu_kernel<S>(k.sparse)(ptrs, ub, ue, coeffs.d(c), s.flags, scratch.data());
        } else {
          ops::cpu_kernel<S>(k.sparse)(ptrs, ub, ue, coeffs.f(c), s.flags, scratch.data());
        }
      });
    });
  }

  // ---- 4. copy back what was updated in a copy ----------------------------------------------
  for (size_t j = 0; j < items.size(); ++j) {
    const size_t i = dense_index[j];
    const SgdItem& it = items[j];
    if (!it.param.is_same(params[i])) params[i].copy_(it.param);
    if (it.buf.defined() && !it.buf.is_same(momentum_buffers[call.buf[i]])) {
      momentum_buffers[call.buf[i]].copy_(it.buf);
    }
    if (it.master.defined() && !it.master.is_same(master_params[call.master[i]])) {
      master_params[call.master[i]].copy_(it.master);
    }
    if (it.comp.defined() && !it.comp.is_same(kahan_comps[call.comp[i]])) {
      kahan_comps[call.comp[i]].copy_(it.comp);
    }
  }
  for (const SparseItem& s : sparse) {
    const size_t i = s.index;
    if (!s.param.is_same(params[i])) params[i].copy_(s.param);
    if (s.buf.defined() && !s.buf.is_same(momentum_buffers[call.buf[i]])) {
      momentum_buffers[call.buf[i]].copy_(s.buf);
    }
  }
  // ---- 5. the next step's seeds (SGD has no step count to key the random bits) -------------
  for (size_t i = 0; i < n; ++i) {
    if (call.seed[i] >= 0) *sr_seeds[call.seed[i]].data_ptr<int64_t>() += 1;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) { m.impl("sgd_", &sgd_cpu); }
// A sparse grad carries the SparseCPU key, which the dispatcher picks over CPU.
TORCH_LIBRARY_IMPL(pyoptim, SparseCPU, m) { m.impl("sgd_", &sgd_cpu); }

}  // namespace pyoptim
