// Every pyoptim op schema, in one place. Kernels register per backend in ops/*_cpu.cpp and
// cuda/*_cuda.cu (TORCH_LIBRARY_IMPL), so a CPU-only build compiles no CUDA and needs no #ifdef.
//
// Conventions (after aten::_fused_adam_): ops are in place and return (); tensor lists first,
// hyper-parameters after `*`; only the tensors an op writes are marked mutable.
// Note [All-or-nothing step]: every check on every tensor runs before any memory is written,
// so an op that raises leaves params, state and step counts exactly as they were.
// The Python module itself (PyInit__C, no pybind11) is in csrc/python/module.cpp.
#include <torch/library.h>

TORCH_LIBRARY(pyoptim, m) {
  // Adam (decoupled=False) and AdamW (decoupled=True). Increments each state_steps[i] by one
  // and uses the new value for bias correction, unless found_inf is non-zero, in which case
  // nothing at all is written (GradScaler's skipped step). grads are read, never written.
  m.def(
      "adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, *, "
      "float lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
      "bool maximize, bool decoupled, Tensor? lr_tensor=None, Tensor? grad_scale=None, "
      "Tensor? found_inf=None) -> ()");

  // SGD with momentum / dampening / Nesterov / L2 weight decay, mirroring
  // torch.optim.SGD's single-tensor expressions. momentum_buffers is ignored (may be empty) when
  // momentum == 0. is_first_step: every buffer starts as this step's gradient (buf = grad), as
  // torch starts a missing buffer. found_inf non-zero: nothing is written. grads are read only.
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, *, float lr, "
      "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
      "bool is_first_step, Tensor? lr_tensor=None, Tensor? grad_scale=None, "
      "Tensor? found_inf=None) -> ()");
  // SGD for one param with a sparse COO gradient (duplicates allowed), lazily: only the rows
  // present in `grad` are updated (momentum, weight decay and the param). Plain SGD (momentum 0,
  // weight decay 0) gives torch's exact result. See Note [Sparse SGD] in ops/sgd_cpu.cpp.
  m.def(
      "sgd_sparse_(Tensor(a!) param, Tensor grad, Tensor(b!)? momentum_buffer, *, float lr, "
      "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
      "bool is_first_step, Tensor? lr_tensor=None, Tensor? grad_scale=None, "
      "Tensor? found_inf=None) -> ()");
  // SparseAdam (torch.optim.SparseAdam's formula). grads are sparse COO, read as they come
  // (uncoalesced). steps[i] is params[i]'s step count *after* this step (the caller increments
  // the Python int in its state once the op returns). weight_decay != 0 (a pyoptim extension)
  // decays the touched rows, decoupled. lr_tensor (a Tensor lr) replaces lr, and step_size is
  // then computed in its dtype, as torch does. grads are read, never written.
  m.def(
      "sparse_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, int[] steps, *, float lr, float beta1, float beta2, "
      "float eps, float weight_decay, bool maximize, Tensor? lr_tensor=None) -> ()");

  // CPU kernel level: "scalar", "avx2" or "avx512".
  m.def("cpu_capability() -> str");
  m.def("max_cpu_capability() -> str");
  // Test hook: run the CPU kernels at `level` from now on; returns the previous level.
  m.def("_set_cpu_capability(str level) -> str");
  // Check-only mode of this thread (Note [Check-only calls] in ops/checks.h): while on, the
  // optimizer ops above validate their arguments and write nothing. Returns the previous mode.
  m.def("_set_check_only(bool on) -> bool");

  // bench/ only: one streaming pass with Adam's memory pattern over four equal float32 arrays:
  // read all four, write three in place (x = x/2 + g, y = y/2 + g, z = z/2 - g). See
  // ops/probe_cpu.cpp.
  m.def("_stream_probe_(Tensor(a!) x, Tensor(b!) y, Tensor(c!) z, Tensor g) -> ()");
}
