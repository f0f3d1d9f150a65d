// The ADInplaceOrView kernel of every op that writes tensors: Note [Version counters].
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <vector>

#include "pyoptim/dense.h"

namespace pyoptim {
namespace {

// Note [Version counters]
// torch's in-place ops bump the version counter of each tensor they write (their
// ADInplaceOrView kernels), and autograd compares a saved tensor's version when backward
// uses it: a graph that saved a param before optimizer.step() then raises "one of the
// variables needed for gradient computation has been modified by an inplace operation"
// instead of computing the gradient with the new weights (the classic pitfall of stepping
// before the backward that needs the old ones, as in GAN training loops). pyoptim's kernels
// write through data pointers, which no dispatcher key sees, so this kernel does what torch's
// generated ADInplaceOrView kernels do for its in-place ops: it runs the op (the backends
// below it), then bumps the version of every tensor in every argument the schema marks as
// written (`Tensor(a!)`, `Tensor(a!)[]`, `Tensor(a!)[]?`), params and state alike, as
// torch.optim's step bumps them. An op that raises has written nothing and bumps nothing
// (Note [All-or-nothing step] in ops/groups.h); `validate_only=True` writes nothing and bumps
// nothing. A step skipped by GradScaler (found_inf set) bumps, as torch's fused ops do (the
// flag is on the device). In InferenceMode a normal tensor is bumped too, as by torch's
// in-place ops; a tensor without a version counter (an inference tensor) is not, as
// torch.autograd.graph.increment_version skips it (bumping it would raise after the writes).
// torch's boxed ADInplaceOrView fallback (autogradNotImplementedInplaceOrViewFallback) bumps
// returned tensors only, and these ops return nothing. The bench's probes (_stream_probe_,
// _row_probe_) are left out: they measure bare kernels.
void bump_written(const at::Tensor& t) {
  if (t.defined() && t.unsafeGetTensorImpl()->version_counter().enabled()) {
    t.unsafeGetTensorImpl()->bump_version();
  }
}

void write_versions(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                    torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t start = stack->size() - args.size();
  std::vector<c10::IValue> written;  // shares each list with the stack (no tensor refcounts)
  bool validate_only = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const c10::IValue& v = (*stack)[start + i];
    const c10::AliasInfo* alias = args[i].alias_info();
    if (alias != nullptr && alias->isWrite() && !v.isNone()) {
      written.push_back(v);
    } else if (args[i].name() == "validate_only") {
      validate_only = v.toBool();
    }
  }
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (validate_only) return;
  for (const c10::IValue& v : written) {
    if (v.isTensor()) {
      bump_written(v.toTensor());
    } else {
      for (const at::Tensor& t : v.toTensorList()) bump_written(t);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, ADInplaceOrView, m) {
  const auto kernel = [] {
    return torch::CppFunction::makeFromBoxedFunction<&write_versions>();
  };
  for (const char* name : {"adam_", "sgd_", "sparse_adam_", "sparse_adagrad_",
                           "rowwise_adagrad_"}) {
    m.impl(name, kernel());
  }
  for_each_dense([&](auto opt) { m.impl(decltype(opt)::kName, kernel()); });
}

}  // namespace pyoptim
