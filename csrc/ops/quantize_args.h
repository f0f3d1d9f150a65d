// quantize_8bit / dequantize_8bit: argument checks and outputs, shared by the CPU and Meta
// kernels (Note [Reduced-precision optimizer states] in math/quantize.h).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ops/checks.h"
#include "pyoptim/math/quantize.h"

namespace pyoptim {
namespace ops {

inline c10::SymInt q8_blocks(const c10::SymInt& numel) {
  return (numel + (math::kQ8Block - 1)) / math::kQ8Block;
}

// list[k] holds the block scales of an 8-bit state of params[i]: a contiguous 1-D float32
// tensor of ceil(numel / 256) on the param's device. Recorded in `writes`.
inline void check_block_scales(const char* op, at::TensorList list, int64_t k,
                               const at::Tensor& p, size_t i, WriteSet& writes,
                               const char* name = "buffer_scales") {
  const c10::SymInt blocks = q8_blocks(p.sym_numel());
  const at::Tensor& sc = list[k];
  TORCH_CHECK_VALUE(sc.defined() && sc.layout() == at::kStrided && sc.dim() == 1 &&
                        sc.sym_numel() == blocks && sc.is_contiguous(),
                    op, ": ", name, "[", k, "] must be a contiguous 1-D tensor of ceil(numel / ",
                    math::kQ8Block, ") = ", blocks, " block scales for params[", i, "]");
  TORCH_CHECK_TYPE(sc.scalar_type() == at::kFloat, op, ": ", name, "[", k, "] has dtype ",
                   sc.scalar_type(), "; block scales are float32");
  TORCH_CHECK(sc.device() == p.device(), op, ": ", name, "[", k, "] is on ", sc.device(),
              " but params[", i, "] is on ", p.device());
  writes.add(sc, name, i);
}

inline at::ScalarType q8_code_dtype(bool sqrt_map) { return sqrt_map ? at::kByte : at::kChar; }

// Empty codes shaped like x and its block scales.
inline std::tuple<at::Tensor, at::Tensor> quantize_8bit_outputs(const at::Tensor& x,
                                                                bool sqrt_map) {
  constexpr const char* op = "pyoptim.quantize_8bit";
  TORCH_CHECK(x.layout() == at::kStrided, op, ": x must be a dense tensor, got ", x.layout());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x has dtype ", x.scalar_type(),
                   "; 8-bit states are converted from float32");
  at::Tensor codes = at::empty_symint(x.sym_sizes(), x.options().dtype(q8_code_dtype(sqrt_map)));
  at::Tensor scales = at::empty_symint({q8_blocks(x.sym_numel())}, x.options());
  return {codes, scales};
}

// Empty float32 output shaped like codes, after checking codes and scales.
inline at::Tensor dequantize_8bit_output(const at::Tensor& codes, const at::Tensor& scales,
                                         bool sqrt_map) {
  constexpr const char* op = "pyoptim.dequantize_8bit";
  TORCH_CHECK(codes.layout() == at::kStrided && scales.layout() == at::kStrided, op,
              ": codes and scales must be dense tensors");
  TORCH_CHECK_TYPE(codes.scalar_type() == q8_code_dtype(sqrt_map), op, ": codes has dtype ",
                   codes.scalar_type(), "; expected ", q8_code_dtype(sqrt_map),
                   sqrt_map ? " (sqrt_map: an exp_avg_sq)" : " (an exp_avg)");
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": scales has dtype ",
                   scales.scalar_type(), "; block scales are float32");
  TORCH_CHECK_VALUE(scales.dim() == 1 && scales.is_contiguous() &&
                        scales.sym_numel() == q8_blocks(codes.sym_numel()),
                    op, ": scales must be a contiguous 1-D tensor of ceil(numel / ",
                    math::kQ8Block, ") = ", q8_blocks(codes.sym_numel()), " block scales");
  TORCH_CHECK(codes.device() == scales.device(), op, ": codes is on ", codes.device(),
              " but scales is on ", scales.device());
  return at::empty_symint(codes.sym_sizes(), codes.options().dtype(at::kFloat));
}

}  // namespace ops
}  // namespace pyoptim
