// pyoptim::quantize_8bit / dequantize_8bit on CPU: whole-tensor conversions between a float32
// moment and adam_'s 8-bit form (Note [Reduced-precision optimizer states] in math/quantize.h).
// The arithmetic is the kernel table's (cpu/adam_impl.h: q8_encode, q8_decode).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "ops/quantize_args.h"
#include "pyoptim/cpu/isa.h"

namespace pyoptim {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_8bit_cpu(const at::Tensor& x, bool sqrt_map) {
  auto [codes, scales] = ops::quantize_8bit_outputs(x, sqrt_map);
  const at::Tensor src = x.contiguous();
  cpu::current_kernels().adam.q8_encode(src.const_data_ptr<float>(), src.numel(),
                                        codes.data_ptr(), scales.data_ptr<float>(), sqrt_map);
  return {codes, scales};
}

at::Tensor dequantize_8bit_cpu(const at::Tensor& codes, const at::Tensor& scales, bool sqrt_map) {
  at::Tensor out = ops::dequantize_8bit_output(codes, scales, sqrt_map);
  const at::Tensor src = codes.contiguous();
  cpu::current_kernels().adam.q8_decode(src.const_data_ptr(), scales.const_data_ptr<float>(),
                                        src.numel(), out.data_ptr<float>(), sqrt_map);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyoptim, CPU, m) {
  m.impl("quantize_8bit", &quantize_8bit_cpu);
  m.impl("dequantize_8bit", &dequantize_8bit_cpu);
}

}  // namespace pyoptim
