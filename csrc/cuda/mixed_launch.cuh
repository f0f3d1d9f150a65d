// The launcher of the opt-in modes' CUDA kernels (master weights, stochastic rounding of
// bfloat16 params, bfloat16 and 8-bit optimizer states, Kahan-compensated 16-bit params),
// shared by adam_
// (cuda/adam_mixed_kernels.cuh) and sgd_ (cuda/sgd_mixed_kernels.cuh): each supplies its
// per-chunk functors and the element sizes of its arrays; the cutting into pieces and chunks,
// the keys and the launches are here.
//
// Note [Mixed-mode launches]
// These modes read arrays of different element types (a bfloat16 param with a float32 master,
// a float32 param with int8 codes and per-block scales), and the stochastic ones key their
// random bits by the element's index in its tensor, so they have their own small launcher next
// to multi_tensor_apply (whose chunks offset every array by one element type): one launch per
// list of tensors, everything in the kernel arguments (as Note [Chunks and blocks]), each tensor
// cut into chunks of kChunk elements, one thread block per chunk. The Kahan mode of adam_ and
// sgd_ (every array in the param's dtype, no random bits) runs here too, as one more element-wise
// mode next to master weights, whose per-tensor step counts (adam_'s device mode) and found_inf
// it shares; its compensated store is kahan_store below, for both ops.
//   * A tensor is first cut into pieces of at most 2^32 elements, starting at multiples of 2^32:
//     sr_key(seed, step, i >> 32, stream) is constant over a piece, so the host computes it once
//     per piece and passes it by value; in a piece, uint32(i) is the element's offset in the
//     piece. A piece is never split across launches (kMaxBlocks), so the offset is exact.
//     (adam_ keys by its step count; SGD has none: step 0, and the op advances the seed.)
//   * The element-wise modes (master, stochastic rounding, bfloat16 states, Kahan): one thread
//     per element, the block striding through its chunk; the scalar path of the CPU loops.
//   * 8-bit states: a quantization block (kQ8Block = 256 elements) belongs to one warp, 8
//     elements per lane (coalesced: lane + 32 k). Decode, step, the block's NaN-propagating
//     maxima by a butterfly of shuffles (max is exact, so any order gives the CPU's value; a NaN
//     anywhere gives NaN, as the CPU's math::q8_absmax_bits), then the q8_scale_* functions
//     decide exactly as the CPU does (a NaN or inf maximum: codes 0 and scale NaN) and the lanes
//     encode their elements from registers. A chunk (a multiple of 256 elements; so is a piece)
//     holds whole quantization blocks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "cuda/multi_tensor_apply.cuh"
#include "pyoptim/math/quantize.h"
#include "pyoptim/math/stochastic_round.h"

namespace pyoptim {
namespace cuda {
namespace mixed {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16384;             // elements per block
constexpr int64_t kPiece = int64_t(1) << 32;  // elements per random-bit key
static_assert(kChunk % math::kQ8Block == 0 && kPiece % kChunk == 0, "chunks hold whole blocks");
static_assert(kThreads % 32 == 0 && math::kQ8Block % 32 == 0, "warps own whole blocks");

// The modes; kPlain is the op's multi_tensor_apply path.
enum class Mode : int { kPlain = 0, kMaster, kSR, kBf16States, kQ8States, kKahan };

// The mode of a param of param group `g` (ops::AdamGroup, ops::SgdGroup: a group has at most one,
// their argument checks see to it).
template <class Group>
Mode mode_of(const Group& g) {
  if (g.master_weights) return Mode::kMaster;
  if (g.stochastic_rounding) return Mode::kSR;
  if (g.bf16_states) return Mode::kBf16States;
  if (g.q8_states) return Mode::kQ8States;
  if (g.kahan) return Mode::kKahan;
  return Mode::kPlain;
}

// One piece of a tensor (<= kPiece elements): its arrays, in an order each op's functors define
// (cuda/adam_mixed_kernels.cuh, cuda/sgd_mixed_kernels.cuh; a per-block scale array is offset to
// the piece's first block).
struct Piece {
  void* addr[6];
  int64_t numel;
  math::SrKey key;    // the stochastic modes: the key of the piece's elements
  const void* step;   // adam_'s device mode (kMaster, kKahan): the tensor's step count
};

template <int MaxPieces>
struct Meta {
  Piece piece[MaxPieces];
  int32_t first_chunk[MaxPieces + 1];  // first_chunk[n] == number of blocks
  int32_t n;
};

template <int MaxPieces, class Op>
__global__ void __launch_bounds__(kThreads)
    mixed_kernel(const __grid_constant__ Meta<MaxPieces> meta, const __grid_constant__ Op op) {
  const int32_t b = static_cast<int32_t>(blockIdx.x);
  int lo = 0, hi = meta.n - 1;  // the last piece whose first chunk is <= b
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta.first_chunk[mid] <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const Piece& pc = meta.piece[lo];
  const int64_t begin = static_cast<int64_t>(b - meta.first_chunk[lo]) * kChunk;
  const int64_t n = pc.numel - begin < kChunk ? pc.numel - begin : kChunk;
  op(pc, begin, n);
}

// Launch `op` over `pieces`, as few launches as the argument budget allows; empty pieces are
// skipped. The caller holds a device guard.
template <class Op>
void launch_pieces(const std::vector<Piece>& pieces, const Op& op) {
  constexpr int kMax = (mta::kArgBytes - static_cast<int>(sizeof(Op)) - 64) /
                       static_cast<int>(sizeof(Piece) + sizeof(int32_t));
  static_assert(kMax >= 8, "mixed launch: functor too large for the argument budget");
  using M = Meta<kMax>;
  static_assert(sizeof(M) + sizeof(Op) <= static_cast<size_t>(mta::kArgBytes),
                "mixed launch: kernel arguments over budget");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  M meta;
  int n = 0;
  int64_t blocks = 0;
  auto flush = [&] {
    if (n == 0) return;
    meta.n = n;
    meta.first_chunk[n] = static_cast<int32_t>(blocks);
    mixed_kernel<kMax, Op><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(meta, op);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    n = 0;
    blocks = 0;
  };
  constexpr int64_t kMaxBlocks = int64_t(1) << 30;  // well inside gridDim.x and int32
  for (const Piece& pc : pieces) {
    if (pc.numel == 0) continue;
    const int64_t chunks = (pc.numel + kChunk - 1) / kChunk;  // <= 2^18: never split
    if (n == kMax || blocks + chunks > kMaxBlocks) flush();
    meta.piece[n] = pc;
    meta.first_chunk[n] = static_cast<int32_t>(blocks);
    ++n;
    blocks += chunks;
  }
  flush();
}

// The compensated store of Note [Kahan-compensated 16-bit params] (math/stochastic_round.h) for
// one element of a 16-bit param P: p0 the param as stored (widened), q the param after the
// optimizer's step on p0. The CPU (kahan_store in cpu/adam_impl.h) reads the stored param back
// for the new compensation; here the rounded value is widened from a register (the same bits).
template <class P>
__device__ __forceinline__ void kahan_store(P& param, P& comp, float p0, float q) {
  const float y = math::kahan_sum(p0, q, static_cast<float>(comp));
  const P stored = P(math::kahan_total(p0, q, y));  // round to nearest even
  param = stored;
  comp = P(math::kahan_residual(y, p0, static_cast<float>(stored)));
}

// One tensor of a mixed launch: its arrays (by mode, as Piece::addr), its size, its seed (the
// stochastic modes) and its step count (adam_'s device mode).
struct MixedItem {
  std::array<void*, 6> addr;
  int64_t numel;
  uint64_t seed;
  const void* step;
};

// The pieces of `items` (Note [Mixed-mode launches]); `bytes`: bytes per element of each array
// (0: a per-block scale), to offset a piece; keys on the stream `stream` (0: the param's bits;
// math::kStateStream: the states') at step `sr_step`.
inline std::vector<Piece> make_pieces(const std::vector<MixedItem>& items,
                                      const std::array<int, 6>& bytes, uint64_t sr_step,
                                      uint64_t stream) {
  std::vector<Piece> pieces;
  pieces.reserve(items.size());
  for (const MixedItem& it : items) {
    for (int64_t off = 0; off < it.numel; off += kPiece) {
      Piece pc{};
      for (int d = 0; d < 6; ++d) {
        char* base = static_cast<char*>(it.addr[d]);
        if (base == nullptr) continue;
        pc.addr[d] = bytes[d] > 0 ? base + off * bytes[d]
                                  : base + (off / math::kQ8Block) * int64_t(sizeof(float));
      }
      pc.numel = std::min(kPiece, it.numel - off);
      pc.key = math::sr_key(it.seed, sr_step, static_cast<uint64_t>(off / kPiece), stream);
      pc.step = it.step;
      pieces.push_back(pc);
    }
  }
  return pieces;
}

}  // namespace mixed
}  // namespace cuda
}  // namespace pyoptim
