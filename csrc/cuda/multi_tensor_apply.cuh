// multi_tensor_apply: one kernel launch for a whole list of tensors (after apex's idea; our own
// code). Used by every pyoptim CUDA optimizer; see ops/adam_cuda.cu for a user.
//
// Note [Chunks and blocks]
// Every tensor is cut into chunks of kChunkSize elements; one thread block handles one chunk.
// A launch carries, in its kernel arguments (no device-side metadata, nothing to allocate, so a
// launch can be captured in a CUDA graph as is), up to kMaxTensors tensors: for each, its
// `Depth` base addresses, its element count, one opaque per-tensor pointer (`extra`: e.g. the
// tensor's step count on the device) and the index of its first chunk. Block b finds its tensor
// by a binary search of those first-chunk indices, so a launch has as many blocks as its
// tensors have chunks: a 256M-element tensor is one launch of 4096 blocks, and 10,000 tiny
// tensors are 10000 / kMaxTensors launches.
//
// Note [Vector and scalar paths]
// A tensor whose `Depth` addresses are all 16-byte aligned is read and written in 16-byte
// accesses (4 x fp32, 2 x fp64, 8 x bf16/fp16); chunk boundaries (multiples of kChunkSize) keep
// every chunk aligned, and a chunk's last n % kVec elements take the scalar path. A tensor with
// any unaligned address (a storage offset, a view) takes the scalar path throughout. Both paths
// call the same per-element function on opmath values (float for the half types, as on CPU), so
// the results are identical.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "pyoptim/math/scalar_ops.h"

namespace pyoptim {
namespace cuda {
namespace mta {

constexpr int kBlockSize = 512;
constexpr int64_t kChunkSize = 65536;  // elements per block; a multiple of every kVec

// Kernel-argument budget of one launch. CUDA >= 12.1 takes up to 32 KB of kernel arguments on
// Volta and newer; a larger table means fewer launches for many small tensors.
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
constexpr int kArgBytes = 16384;
#else
constexpr int kArgBytes = 4000;
#endif

using math::opmath_t;  // float for the 16-bit types (math/scalar_ops.h)

// Widen on load, narrow on store (c10's conversions round to nearest even, like the CPU's).
template <class S>
__device__ __forceinline__ opmath_t<S> load_op(const S& x) {
  return static_cast<opmath_t<S>>(x);
}
template <class S>
__device__ __forceinline__ S store_op(opmath_t<S> x) {
  return S(x);
}

// A one-element tensor read on the device (lr, grad_scale, found_inf, step counts): float32 or
// float64, or absent (ptr == nullptr).
struct ScalarRef {
  const void* ptr = nullptr;
  bool is_double = false;
  __device__ __forceinline__ double get() const {
    return is_double ? *static_cast<const double*>(ptr)
                     : static_cast<double>(*static_cast<const float*>(ptr));
  }
};

// A step count tensor's value after this step, as the tensor stores it (the host's
// ops::next_step_count; the count is incremented in place after the update): a float32 count
// stays at 2^24, as torch's `step_t += 1`.
__device__ __forceinline__ double next_step_count(const void* count, bool is_double) {
  return is_double
             ? *static_cast<const double*>(count) + 1.0
             : static_cast<double>(static_cast<float>(*static_cast<const float*>(count) + 1.0));
}

// A one-element scalar tensor that the kernels read on the device (float32 or float64).
inline ScalarRef device_scalar(const at::Tensor& t, std::vector<at::Tensor>& keep_alive) {
  at::Tensor u = t;
  if (u.scalar_type() != at::kFloat && u.scalar_type() != at::kDouble) {
    u = u.to(at::kDouble);  // exact; asynchronous
    keep_alive.push_back(u);
  }
  ScalarRef r;
  r.ptr = u.data_ptr();
  r.is_double = u.scalar_type() == at::kDouble;
  return r;
}

// Tensors per launch for a given depth, so that the table plus `op_bytes` of functor fits.
constexpr int max_tensors(int depth, int op_bytes) {
  // per tensor: depth addresses + numel + extra + first chunk + aligned flag
  return (kArgBytes - op_bytes - 64) / (depth * 8 + 8 + 8 + 4 + 1);
}

template <int Depth, int MaxTensors>
struct TensorListMeta {
  void* addr[Depth][MaxTensors];
  int64_t numel[MaxTensors];
  const void* extra[MaxTensors];
  int32_t first_chunk[MaxTensors + 1];  // first_chunk[n_tensors] == number of blocks
  bool aligned[MaxTensors];
  int32_t n_tensors;
};

// What an op functor gets for one block: its tensor's chunk.
template <int Depth>
struct Chunk {
  void* addr[Depth];  // already offset to the chunk's first element
  int64_t n;          // elements in this chunk (1..kChunkSize)
  const void* extra;
  bool aligned;
};

template <class S, int Depth, int MaxTensors, class Op>
__global__ void __launch_bounds__(kBlockSize)
    multi_tensor_kernel(const __grid_constant__ TensorListMeta<Depth, MaxTensors> meta,
                        const __grid_constant__ Op op) {
  const int32_t b = static_cast<int32_t>(blockIdx.x);
  // Binary search: the last t with first_chunk[t] <= b (uniform across the block).
  int lo = 0, hi = meta.n_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta.first_chunk[mid] <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int t = lo;
  const int64_t begin = static_cast<int64_t>(b - meta.first_chunk[t]) * kChunkSize;
  Chunk<Depth> c;
  c.n = meta.numel[t] - begin < kChunkSize ? meta.numel[t] - begin : kChunkSize;
  c.extra = meta.extra[t];
  c.aligned = meta.aligned[t];
#pragma unroll
  for (int d = 0; d < Depth; ++d) c.addr[d] = static_cast<S*>(meta.addr[d][t]) + begin;
  op(c, begin);
}

// One tensor's share of a multi_tensor_apply call.
template <int Depth>
struct TensorRef {
  std::array<void*, Depth> addr;
  int64_t numel;
  const void* extra;
};

// Launch `op` over `tensors` (all of element type S), as few launches as the argument budget
// allows. Empty tensors are skipped. The caller has validated everything and holds a device
// guard for the tensors' device.
template <class S, int Depth, class Op>
void multi_tensor_apply(const std::vector<TensorRef<Depth>>& tensors, const Op& op) {
  constexpr int kMax = max_tensors(Depth, static_cast<int>(sizeof(Op)));
  static_assert(kMax >= 8, "multi_tensor_apply: functor too large for the argument budget");
  using Meta = TensorListMeta<Depth, kMax>;
  static_assert(sizeof(Meta) + sizeof(Op) <= static_cast<size_t>(kArgBytes),
                "multi_tensor_apply: kernel arguments over budget");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Meta meta;
  int n = 0;
  int64_t blocks = 0;
  auto flush = [&] {
    if (n == 0) return;
    meta.n_tensors = n;
    meta.first_chunk[n] = static_cast<int32_t>(blocks);
    multi_tensor_kernel<S, Depth, kMax, Op>
        <<<static_cast<unsigned>(blocks), kBlockSize, 0, stream>>>(meta, op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    n = 0;
    blocks = 0;
  };
  constexpr int64_t kMaxBlocks = int64_t(1) << 30;  // well inside gridDim.x and int32
  for (const TensorRef<Depth>& t : tensors) {
    if (t.numel == 0) continue;
    int64_t chunks = (t.numel + kChunkSize - 1) / kChunkSize;
    int64_t offset = 0;  // elements; a tensor too big for one launch is split
    while (chunks > 0) {
      if (n == kMax || blocks == kMaxBlocks) flush();
      const int64_t take = std::min(chunks, kMaxBlocks - blocks);
      bool aligned = true;
      for (int d = 0; d < Depth; ++d) {
        meta.addr[d][n] = static_cast<S*>(t.addr[d]) + offset;
        aligned = aligned && reinterpret_cast<uintptr_t>(meta.addr[d][n]) % 16 == 0;
      }
      meta.numel[n] = std::min(t.numel - offset, take * kChunkSize);
      meta.extra[n] = t.extra;
      meta.aligned[n] = aligned;
      meta.first_chunk[n] = static_cast<int32_t>(blocks);
      ++n;
      blocks += take;
      chunks -= take;
      offset += take * kChunkSize;
    }
  }
  flush();
}

// The element loop of one chunk: loads `Depth` values per element (as opmath), calls
// f(x) with x an opmath array of Depth values, and stores back the arrays in kWriteMask.
// Vector path when the chunk is aligned (Note [Vector and scalar paths]).
template <class S, int Depth, unsigned kWriteMask, class F>
__device__ __forceinline__ void for_each_element(const Chunk<Depth>& c, const F& f) {
  using T = opmath_t<S>;
  constexpr int kVec = 16 / static_cast<int>(sizeof(S));
  struct alignas(16) Pack {
    S v[kVec];
  };
  int64_t i0 = 0;
  if (c.aligned) {
    const int64_t n_vec = c.n / kVec;
    for (int64_t i = threadIdx.x; i < n_vec; i += blockDim.x) {
      Pack pk[Depth];
#pragma unroll
      for (int d = 0; d < Depth; ++d) pk[d] = static_cast<const Pack*>(c.addr[d])[i];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        T x[Depth];
#pragma unroll
        for (int d = 0; d < Depth; ++d) x[d] = load_op<S>(pk[d].v[k]);
        f(x);
#pragma unroll
        for (int d = 0; d < Depth; ++d) {
          if (kWriteMask & (1u << d)) pk[d].v[k] = store_op<S>(x[d]);
        }
      }
#pragma unroll
      for (int d = 0; d < Depth; ++d) {
        if (kWriteMask & (1u << d)) static_cast<Pack*>(c.addr[d])[i] = pk[d];
      }
    }
    i0 = n_vec * kVec;
  }
  for (int64_t i = i0 + threadIdx.x; i < c.n; i += blockDim.x) {
    T x[Depth];
#pragma unroll
    for (int d = 0; d < Depth; ++d) x[d] = load_op<S>(static_cast<const S*>(c.addr[d])[i]);
    f(x);
#pragma unroll
    for (int d = 0; d < Depth; ++d) {
      if (kWriteMask & (1u << d)) static_cast<S*>(c.addr[d])[i] = store_op<S>(x[d]);
    }
  }
}

}  // namespace mta
}  // namespace cuda
}  // namespace pyoptim
