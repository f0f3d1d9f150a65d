// pyoptim::adam_ on CPU: validate everything, then one parallel region over all tensors of all
// param groups (Note [Param groups in one call] in ops/groups.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "ops/adam_args.h"
#include "ops/checks.h"
#include "ops/dtypes.h"
#include "ops/parallel.h"
#include "pyoptim/cpu/isa.h"
#include "pyoptim/math/adam.h"
#include "pyoptim/math/quantize.h"

namespace pyoptim {
namespace {

constexpr const char* kOp = "pyoptim.adam_";

// One tensor's share of the step, after validation: raw pointers (no tensor handles, so many
// small tensors cost no reference counting), its flags and an index into the coefficients.
struct AdamItem {
  cpu::AdamPtrs ptrs;
  at::ScalarType dtype;
  cpu::AdamFlags flags;
  int32_t coeffs;
  // float32 master weights and moments (Note [Master weights and stochastic rounding])
  bool master;
};

// The kernel's elements per scale block (ops::ItemSplit cuts ranges at multiples of it).
int64_t split_align(const cpu::AdamFlags& f) {
  return f.states == cpu::StateFormat::kQ8 ? math::kQ8Block : ops::ItemSplit::kAlign;
}

// Tensors whose layouts disagree are updated in copies in one layout (Note [Work layout] in
// ops/checks.h), copied back afterwards.
struct Relayout {
  size_t index;
  at::Tensor param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master, comp;
};

// Coefficients per distinct (group, step count, param dtype); usually one per group and dtype.
// Computed while validating: a coefficient that does not fit the param's dtype raises torch's
// overflow error (Note [Narrowing coefficients] in math/scalar_ops.h) before anything is written.
class CoeffTable {
 public:
  int32_t get(size_t group, double step, at::ScalarType dtype, const ops::AdamGroup& g,
              double lr, double scale) {
    for (size_t k = 0; k < keys_.size(); ++k) {
      if (keys_[k].group == group && keys_[k].step == step && keys_[k].dtype == dtype) {
        return static_cast<int32_t>(k);
      }
    }
    keys_.push_back(Key{group, step, dtype});
    f_.emplace_back();
    d_.emplace_back();
    ops::dispatch_param_dtype(dtype, [&](auto st) {
      using S = decltype(st);
      using T = ops::opmath_t<S>;
      const auto c = math::make_adam_coeffs<T>(lr, g.beta1, g.beta2, g.eps, g.weight_decay,
                                               g.decoupled, step, scale,
                                               ops::CheckedNarrow<T, S>());
      if constexpr (std::is_same<T, double>::value) {
        d_.back() = c;
      } else {
        f_.back() = c;
      }
    });
    return static_cast<int32_t>(keys_.size() - 1);
  }
  const math::AdamCoeffs<float>& f(int32_t k) const { return f_[k]; }
  const math::AdamCoeffs<double>& d(int32_t k) const { return d_[k]; }

 private:
  struct Key {
    size_t group;
    double step;
    at::ScalarType dtype;
  };
  std::vector<Key> keys_;
  std::vector<math::AdamCoeffs<float>> f_;
  std::vector<math::AdamCoeffs<double>> d_;
};

void adam_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
              at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
              at::TensorList state_steps, at::IntArrayRef group_sizes,
              at::ArrayRef<double> hyper, const c10::List<bool>& flags,
              const c10::List<std::optional<at::Tensor>>& lr_tensors,
              const std::optional<at::Tensor>& grad_scale,
              const std::optional<at::Tensor>& found_inf, bool validate_only,
              const std::optional<at::TensorList>& master_list,
              const std::optional<at::TensorList>& seed_list,
              const std::optional<at::TensorList>& m_scale_list,
              const std::optional<at::TensorList>& v_scale_list,
              const std::optional<at::TensorList>& comp_list) {
  std::vector<at::Tensor> own_grads;  // Note [Grads read by the op] in ops/checks.h
  grads = ops::grads_of_params(kOp, params, grads, own_grads);
  const at::TensorList master_params = master_list.value_or(at::TensorList());
  const at::TensorList sr_seeds = seed_list.value_or(at::TensorList());
  const at::TensorList exp_avg_scales = m_scale_list.value_or(at::TensorList());
  const at::TensorList exp_avg_sq_scales = v_scale_list.value_or(at::TensorList());
  const at::TensorList kahan_comps = comp_list.value_or(at::TensorList());
  // ---- 1. validate everything and compute the coefficients; nothing is written here -------
  ops::WriteSet writes;
  const ops::AdamCall call = ops::check_adam_call(
      kOp, c10::DeviceType::CPU, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
      state_steps, group_sizes, hyper, flags, lr_tensors, grad_scale, found_inf, master_params,
      sr_seeds, exp_avg_scales, exp_avg_sq_scales, kahan_comps, writes);
  std::vector<double> group_lr(call.groups.size());
  for (size_t g = 0; g < call.groups.size(); ++g) {
    const ops::AdamGroup& grp = call.groups[g];
    group_lr[g] = grp.lr_tensor.has_value() ? ops::scalar_value(*grp.lr_tensor, "lr") : grp.lr;
    ops::check_lr(group_lr[g]);
  }
  double scale = 1.0;
  if (grad_scale.has_value()) {
    scale = ops::scalar_value(*grad_scale, "grad_scale");
    ops::check_grad_scale(kOp, scale);
  }
  const bool skip = found_inf.has_value() && ops::scalar_value(*found_inf, "found_inf") != 0.0;
  const size_t n = params.size();
  std::vector<double> steps(n);
  std::vector<AdamItem> items(n);
  CoeffTable coeffs;
  for (size_t i = 0; i < n; ++i) {
    steps[i] = ops::next_step_count(kOp, state_steps[i], i);  // the count after this step
    const ops::AdamGroup& grp = call.of(i);
    AdamItem& it = items[i];
    it.dtype = params[i].scalar_type();
    it.master = call.master[i] >= 0;
    it.flags = cpu::AdamFlags{grp.decoupled,           grp.amsgrad,
                              grp.maximize,            grad_scale.has_value(),
                              grp.stochastic_rounding, grp.states(),
                              grp.kahan};
    // a master-weights param steps its float32 master: the coefficients of a float32 param
    it.coeffs = coeffs.get(call.group[i], steps[i], it.master ? at::kFloat : it.dtype, grp,
                           group_lr[call.group[i]], scale);
    if (call.seed[i] >= 0) {
      it.ptrs.sr_seed = static_cast<uint64_t>(
          *sr_seeds[call.seed[i]].const_data_ptr<int64_t>());
      it.ptrs.sr_step = static_cast<uint64_t>(steps[i]);
    }
  }
  writes.check(kOp);
  if (validate_only || skip) return;  // skip: GradScaler found inf/NaN grads (no step counted)
  grads = writes.unaliased_reads(grads, own_grads);  // Note [Exact overlap]

  // ---- 2. plan: pointers, or copies in one layout where layouts differ ----------------------
  std::vector<Relayout> relayouts;
  ops::ItemSplit split;
  const at::Tensor none;
  for (size_t i = 0; i < n; ++i) {
    AdamItem& it = items[i];
    const at::Tensor& vmax = call.vmax[i] >= 0 ? max_exp_avg_sqs[call.vmax[i]] : none;
    const at::Tensor& master = it.master ? master_params[call.master[i]] : none;
    const at::Tensor& comp = call.comp[i] >= 0 ? kahan_comps[call.comp[i]] : none;
    const uint64_t seed = it.ptrs.sr_seed, sr_step = it.ptrs.sr_step;
    void* const m_scale = call.scale[i] >= 0 ? exp_avg_scales[call.scale[i]].data_ptr() : nullptr;
    void* const v_scale =
        call.scale[i] >= 0 ? exp_avg_sq_scales[call.scale[i]].data_ptr() : nullptr;
    if (ops::same_dense_layout(params[i],
                               {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], &vmax, &master, &comp},
                               call.scale[i] >= 0)) {
      it.ptrs = cpu::AdamPtrs{params[i].data_ptr(),
                              grads[i].const_data_ptr(),
                              exp_avgs[i].data_ptr(),
                              exp_avg_sqs[i].data_ptr(),
                              vmax.defined() ? vmax.data_ptr() : nullptr,
                              master.defined() ? master.data_ptr() : nullptr,
                              seed,
                              sr_step,
                              m_scale,
                              v_scale,
                              comp.defined() ? comp.data_ptr() : nullptr};
    } else {
      // Note [Work layout] in ops/checks.h: the param's own where the walk order does not
      // matter (the stochastic modes key random bits by it; 8-bit states are row-major)
      const bool order = ops::param_work_order(
          params[i], call.seed[i] < 0 && it.flags.states == cpu::StateFormat::kParam);
      const auto work = [&](const at::Tensor& t) {
        return ops::in_work_layout(t, params[i], order);
      };
      Relayout r{i,         work(params[i]), work(grads[i]), work(exp_avgs[i]),
                 work(exp_avg_sqs[i]), work(vmax),   work(master), work(comp)};
      it.ptrs = cpu::AdamPtrs{r.param.data_ptr(),
                              r.grad.const_data_ptr(),
                              r.exp_avg.data_ptr(),
                              r.exp_avg_sq.data_ptr(),
                              vmax.defined() ? r.max_exp_avg_sq.data_ptr() : nullptr,
                              master.defined() ? r.master.data_ptr() : nullptr,
                              seed,
                              sr_step,
                              m_scale,
                              v_scale,
                              comp.defined() ? r.comp.data_ptr() : nullptr};
      relayouts.push_back(std::move(r));
    }
    split.add(params[i].numel(), it.master ? 4 : params[i].element_size(),
              split_align(it.flags));
  }

  // ---- 3. update: one parallel region over every tensor -----------------------------------
  const cpu::AdamKernels& k = cpu::current_kernels().adam;
  split.run([&](size_t i, int64_t begin, int64_t end) {
    const AdamItem& it = items[i];
    if (it.master) {
      const auto fn = it.dtype == at::kBFloat16 ? k.bf16_master : k.f16_master;
      fn(it.ptrs, begin, end, coeffs.f(it.coeffs), it.flags);
      return;
    }
    ops::dispatch_param_dtype(it.dtype, [&](auto s) {
      using S = decltype(s);
      if constexpr (std::is_same<S, double>::value) {
        ops::cpu_kernel<S>(k)(it.ptrs, begin, end, coeffs.d(it.coeffs), it.flags);
      } else {
        ops::cpu_kernel<S>(k)(it.ptrs, begin, end, coeffs.f(it.coeffs), it.flags);
      }
    });
  });

  // ---- 4. copy back what was updated in a copy, and count the step ------------------------
  for (const Relayout& r : relayouts) {
    const size_t i = r.index;
    if (!r.param.is_same(params[i])) params[i].copy_(r.param);
    if (!r.exp_avg.is_same(exp_avgs[i])) exp_avgs[i].copy_(r.exp_avg);
    if (!r.exp_avg_sq.is_same(exp_avg_sqs[i])) exp_avg_sqs[i].copy_(r.exp_avg_sq);
    if (r.max_exp_avg_sq.defined()) {
      const at::Tensor& vmax = max_exp_avg_sqs[call.vmax[i]];
      if (!r.max_exp_avg_sq.is_same(vmax)) vmax.copy_(r.max_exp_avg_sq);
    }
    if (r.master.defined()) {
      const at::Tensor& master = master_params[call.master[i]];
      if (!r.master.is_same(master)) master.copy_(r.master);
    }
    if (r.comp.defined()) {
      const at::Tensor& comp = kahan_comps[call.comp[i]];
      if (!r.comp.is_same(comp)) comp.copy_(r.comp);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    ops::store_host_step(state_steps[i], steps[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) { m.impl("adam_", &adam_cpu); }

// A sparse grad (or param) among CPU tensors makes the dispatcher pick SparseCPU. The same
// function serves it: its checks reject every non-strided tensor before anything is written,
// with torch.optim's "Adam does not support sparse gradients" for grads, instead of the
// dispatcher's "Could not run 'pyoptim::adam_' with arguments from the 'SparseCPU' backend".
TORCH_LIBRARY_IMPL(pyoptim, SparseCPU, m) { m.impl("adam_", &adam_cpu); }

}  // namespace pyoptim
