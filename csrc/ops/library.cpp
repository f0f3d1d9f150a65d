// Every pyoptim op schema, in one place. Kernels register per backend in ops/*_cpu.cpp,
// ops/*_cuda.cu and ops/meta.cpp (TORCH_LIBRARY_IMPL), so a CPU-only build compiles no CUDA and
// needs no #ifdef. The Python module itself (an empty PyInit__C) is in csrc/python/module.cpp.
//
// Conventions (after aten::_fused_adam_): ops are in place and return (); tensor lists first,
// then the hyper-parameters; only the tensors an op writes are marked mutable. One call covers
// every param group on one device (Note [Param groups in one call] in ops/groups.h) and happens
// whole or not at all; validate_only=True runs every check and writes nothing
// (Note [All-or-nothing step], same file). Arguments are positional-or-keyword (no `*`): the
// optimizers pass them positionally, which halves torch.ops' per-call argument parsing. The CPU
// kernels of adam_, sgd_ and the dense optimizers' ops take an empty `grads` list to mean each
// param's own .grad (Note [Grads read by the op] in ops/checks.h).
#include <torch/library.h>

#include "ops/dense_args.h"

TORCH_LIBRARY(pyoptim, m) {
  // Adam (decoupled=False) and AdamW (decoupled=True). Per group, hyper = (lr, beta1, beta2,
  // weight_decay, eps) and flags = (amsgrad, maximize, decoupled, master_weights,
  // stochastic_rounding) (Note [Master weights and stochastic rounding] in
  // math/stochastic_round.h): master_params holds one float32 master per param of a
  // master_weights group (whose moments are float32 too), sr_seeds one int64 CPU seed per param
  // of a stochastic_rounding group (None: no such group). Increments each
  // state_steps[i] by one and uses the new value for bias correction, unless found_inf is
  // non-zero, in which case nothing at all is written (GradScaler's skipped step). flags
  // continue with (bf16_states, q8_states, kahan): exp_avg_scales / exp_avg_sq_scales hold the
  // 8-bit moments' block scales (Note [Reduced-precision optimizer states] in
  // math/quantize.h), kahan_comps one compensation per param of a kahan group (its dtype:
  // Note [Kahan-compensated 16-bit params] in math/stochastic_round.h). A step count
  // must be a non-negative whole number. grads are read, never written.
  m.def(
      "adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, "
      "int[] group_sizes, float[] hyper, bool[] flags, Tensor?[] lr_tensors, "
      "Tensor? grad_scale=None, Tensor? found_inf=None, bool validate_only=False, "
      "Tensor(f!)[]? master_params=None, Tensor[]? sr_seeds=None, "
      "Tensor(g!)[]? exp_avg_scales=None, Tensor(h!)[]? exp_avg_sq_scales=None, "
      "Tensor(i!)[]? kahan_comps=None) -> ()");

  // Conversions of one float32 moment to and from the 8-bit form of adam_'s q8_states
  // (Note [Reduced-precision optimizer states] in math/quantize.h), rounded to nearest: codes
  // shaped like x (int8, or uint8 with sqrt_map for an exp_avg_sq) and one float32 scale per
  // block of 256 elements in row-major order. For loading a float32 state into an optimizer with
  // 8-bit states, and for exporting one (pyoptim.Adam.torch_state_dict). CPU tensors.
  m.def("quantize_8bit(Tensor x, bool sqrt_map) -> (Tensor codes, Tensor scales)");
  m.def("dequantize_8bit(Tensor codes, Tensor scales, bool sqrt_map) -> Tensor");

  // SGD with momentum / dampening / Nesterov / L2 weight decay, mirroring torch.optim.SGD's
  // single-tensor expressions. Per group, hyper = (lr, momentum, dampening, weight_decay) and flags
  // = (nesterov, maximize, master_weights, ...); master_params holds one float32 master per param
  // of a master_weights group (momentum required, dense grads; its buffers are float32:
  // Note [Master weights and stochastic rounding] in math/stochastic_round.h). grads may be dense,
  // or sparse COO (duplicates allowed), which update the param lazily: only the rows present in the
  // grad (momentum, weight decay and the param; Note [Sparse SGD] in ops/sgd_cpu.cpp).
  // momentum_buffers holds one buffer per param of a group with momentum != 0; first_step, one
  // entry per buffer (or none): true where the buffer takes its first step (buf = grad, as torch
  // starts a missing buffer). found_inf non-zero: nothing is written. grads are read only. flags
  // continue with (stochastic_rounding, bf16_states, q8_states), as adam_'s (dense grads): sr_seeds
  // holds one int64 CPU seed per param of such groups, which the step increments (SGD has no step
  // count: the seed keys the step's random bits), buffer_scales one float32 scale per 256 elements
  // per 8-bit buffer (Note [Reduced-precision optimizer states] in math/quantize.h). The 7th flag,
  // kahan (16-bit params, dense grads, with or without momentum): kahan_comps holds one
  // compensation per param of a kahan group, of its dtype (Note [Kahan-compensated 16-bit params]
  // in math/stochastic_round.h).
  m.def(
      "sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "int[] group_sizes, float[] hyper, bool[] flags, bool[] first_step, "
      "Tensor?[] lr_tensors, Tensor? grad_scale=None, Tensor? found_inf=None, "
      "bool validate_only=False, Tensor(c!)[]? master_params=None, "
      "Tensor(d!)[]? sr_seeds=None, Tensor(e!)[]? buffer_scales=None, "
      "Tensor(f!)[]? kahan_comps=None) -> ()");

  // SparseAdam (torch.optim.SparseAdam's formula). Per group, hyper = (lr, beta1, beta2, eps,
  // weight_decay) and flags = (maximize). grads are sparse COO, read as
  // they come (uncoalesced). steps[i] is params[i]'s step count before this step, a non-negative
  // whole number (ValueError otherwise); the step uses steps[i] + 1, and the caller increments
  // the count in its state once the op returns. weight_decay != 0 (a pyoptim
  // extension) decays the touched rows, decoupled. A Tensor lr (lr_tensors) replaces lr, and
  // step_size is then computed in its dtype, as torch does. grads are read, never written.
  m.def(
      "sparse_adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, float[] steps, int[] group_sizes, float[] hyper, bool[] flags, "
      "Tensor?[] lr_tensors, bool validate_only=False) -> ()");

  // torch.optim.Adagrad's step for sparse COO grads (its sparse branch: Note [Sparse Adagrad]
  // in math/adagrad.h), read as they come (uncoalesced). Per group, hyper = (lr, lr_decay,
  // weight_decay, eps) and flags = (maximize); weight_decay != 0 is torch's error. state_sums are
  // shaped like the params. Increments each state_steps[i] by one and uses the new value in the
  // decayed lr. grads are read, never written.
  m.def(
      "sparse_adagrad_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, "
      "Tensor(c!)[] state_steps, int[] group_sizes, float[] hyper, bool[] flags, "
      "Tensor?[] lr_tensors, bool validate_only=False) -> ()");

  // Row-wise Adagrad (pyoptim.RowWiseAdagrad; Note [Row-wise Adagrad] in
  // math/rowwise_adagrad.h): one accumulator per row (dim 0) of each param, state_sums[i] of
  // shape [rows] in the math type (float64 for float64 params, else float32). grads dense (every
  // row) or sparse COO over dim 0 (the rows present, duplicates summed). Per group, hyper = (lr,
  // lr_decay, weight_decay, eps) and flags = (maximize, decoupled): weight_decay != 0 is L2
  // (decoupled=False) or decoupled decay. Counts state_steps as sparse_adagrad_ does.
  m.def(
      "rowwise_adagrad_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, "
      "Tensor(c!)[] state_steps, int[] group_sizes, float[] hyper, bool[] flags, "
      "Tensor?[] lr_tensors, bool validate_only=False) -> ()");

  // Every dense optimizer (Adamax, ...): one schema shape for all of them, see Note [Dense
  // optimizers] in pyoptim/dense.h.
  pyoptim::for_each_dense(
      [&](auto opt) { m.def(pyoptim::ops::dense_schema<decltype(opt)>().c_str()); });

  // CPU kernel level: "scalar", "avx2" or "avx512" on x86-64, "scalar" or "neon" on AArch64.
  m.def("cpu_capability() -> str");
  m.def("max_cpu_capability() -> str");
  // The levels this build has, lowest first.
  m.def("cpu_levels() -> str[]");
  // Test hook: run the CPU kernels at `level` from now on; returns the previous level.
  m.def("_set_cpu_capability(str level) -> str");
  // Test hook: the level of the kernel table the CPU ops call right now (cpu_capability()
  // says which level is selected; this says which table's code runs).
  m.def("_kernel_table_isa() -> str");
  // Whether this build compiled the CUDA kernels.
  m.def("_built_with_cuda() -> bool");

  // bench/ only: one streaming pass with Adam's memory pattern over four equal float32 arrays:
  // read all four, write three in place (x = x/2 + g, y = y/2 + g, z = z/2 - g). See
  // ops/probe_cpu.cpp.
  m.def("_stream_probe_(Tensor(a!) x, Tensor(b!) y, Tensor(c!) z, Tensor g) -> ()");
  // bench/ only: the sparse optimizers' memory pattern: the value rows of g (grouped by their
  // ascending `rows`) summed per row, then that row of x (and y, z) read and written once. See
  // ops/probe_cpu.cpp.
  m.def("_row_probe_(Tensor(a!) x, Tensor(b!)? y, Tensor(c!)? z, Tensor g, Tensor rows) -> ()");
}
