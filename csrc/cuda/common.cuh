// Shared by every CUDA op: checked calls and launches, grid helpers, dtype mapping, the tile loader, warp argmin /
// argmax with lowest-index ties, and a block top-k merge.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "tokenset/common.h"

namespace tokenset {
namespace cuda {

// ---- checked calls --------------------------------------------------------------------------------------------------
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("tokenset CUDA ") + what + " failed: " + cudaGetErrorString(err));
}
// TOKENSET_CUDA_CHECK(cudaMemsetAsync(...)); TOKENSET_CHECK_LAUNCH("maxsim") after every <<<...>>>.
#define TOKENSET_CUDA_CHECK(call) ::tokenset::cuda::check_cuda((call), #call)
#define TOKENSET_CHECK_LAUNCH(name) ::tokenset::cuda::check_cuda(cudaGetLastError(), name " launch")

inline cudaStream_t stream_of(const Launch& launch) { return static_cast<cudaStream_t>(launch.stream); }

// ---- grid helpers ---------------------------------------------------------------------------------------------------
constexpr int64_t kMaxGrid = int64_t(1) << 30;  // grid-stride loops cover the rest

// Blocks for `items` work items at `per_block` items per block, at least 1, capped for grid-stride loops.
inline int grid_for(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// ---- dtypes ---------------------------------------------------------------------------------------------------------
template <DType D>
struct cuda_type;
template <>
struct cuda_type<DType::Float32> {
  using type = float;
};
template <>
struct cuda_type<DType::Float16> {
  using type = __half;
};
template <>
struct cuda_type<DType::BFloat16> {
  using type = __nv_bfloat16;
};
template <DType D>
using cuda_type_t = typename cuda_type<D>::type;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T zero_of() {
  return T(0.0f);
}

// ---- the tile loader --------------------------------------------------------------------------------------------------
// Copies rows [0, kRows) x columns [k0, k0 + kCols) of a strided row-major matrix into shared memory (row pitch
// kPitch elements), zero outside `valid_rows` / `dim`, with kThreads threads. kVec: 16-byte loads (the caller checked
// that dim, the row stride and the base are multiples of 16 bytes, and kPitch * sizeof(T) is too).
template <typename T, int kRows, int kCols, int kPitch, int kThreads, bool kVec>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t stride, int valid_rows, int64_t k0,
                                          int64_t dim) {
  if constexpr (kVec && sizeof(T) < 16) {
    constexpr int kPerVec = 16 / sizeof(T);
    constexpr int kVecsPerRow = kCols / kPerVec;
    for (int e = threadIdx.x; e < kRows * kVecsPerRow; e += kThreads) {
      const int r = e / kVecsPerRow, c = (e % kVecsPerRow) * kPerVec;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < valid_rows && k0 + c < dim) v = *reinterpret_cast<const uint4*>(src + r * stride + k0 + c);
      *reinterpret_cast<uint4*>(dst + r * kPitch + c) = v;
    }
  } else {
    for (int e = threadIdx.x; e < kRows * kCols; e += kThreads) {
      const int r = e / kCols, c = e % kCols;
      dst[r * kPitch + c] = (r < valid_rows && k0 + c < dim) ? src[r * stride + k0 + c] : zero_of<T>();
    }
  }
}

// ---- warp argmin / argmax, lowest index on ties --------------------------------------------------------------------
// Every lane holds (value, index); every lane returns the winner. Indices are distinct or the lanes' own.
__device__ __forceinline__ void warp_argmin(uint32_t& value, int64_t& index) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const uint32_t v = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, index, offset);
    if (v < value || (v == value && i < index)) value = v, index = i;
  }
}

// NaN ranks below every number (as the CPU top-k).
__device__ __forceinline__ void warp_argmax(float& value, int64_t& index) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, index, offset);
    const float a = value != value ? -INFINITY : value, b = v != v ? -INFINITY : v;
    if (b > a || (b == a && i < index)) value = v, index = i;
  }
}

// ---- greedy selection: the best (value, index) of a block, larger value first, then the lower index --------------
// (k-center, coverage). Index -1 is "no candidate".
__device__ __forceinline__ void keep_best(float value, int64_t index, float& best_value, int64_t& best_index) {
  if (index < 0) return;
  if (best_index < 0 || value > best_value || (value == best_value && index < best_index)) {
    best_value = value;
    best_index = index;
  }
}

// Every thread offers (value, index); on return every thread sees the block's best in *out_value / *out_index
// (shared memory). kWarps warps; s_value / s_index: shared arrays of kWarps entries.
template <int kWarps>
__device__ void block_best(float value, int64_t index, float* s_value, int64_t* s_index, float* out_value,
                           int64_t* out_index) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, value, offset);
    const int64_t i = __shfl_xor_sync(0xffffffffu, index, offset);
    keep_best(v, i, value, index);
  }
  if (threadIdx.x % 32 == 0) s_value[threadIdx.x / 32] = value, s_index[threadIdx.x / 32] = index;
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = -INFINITY;
    int64_t i = -1;
    for (int w = 0; w < kWarps; ++w) keep_best(s_value[w], s_index[w], v, i);
    *out_value = v;
    *out_index = i;
  }
  __syncthreads();
}

// Pick outputs before a greedy selection: indices -1, values NaN (values may be null). A template, so that every
// translation unit that launches it has its own definition.
template <int kUnused = 0>
__global__ void fill_picks_kernel(int64_t* indices, float* values, int64_t size) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x) {
    indices[i] = -1;
    if (values) values[i] = __int_as_float(0x7fc00000);
  }
}
inline void fill_picks(int64_t* indices, float* values, int64_t size, cudaStream_t stream) {
  fill_picks_kernel<><<<grid_for(size, 256), 256, 0, stream>>>(indices, values, size);
  TOKENSET_CHECK_LAUNCH("fill picks");
}

// ---- block top-k --------------------------------------------------------------------------------------------------
// Ranking keys: a 64-bit key whose order is the CPU's top-k order (higher score first, NaN as -inf, -0 as +0, then
// the lower index), so that keys are distinct and a larger key ranks first. Key 0 is "no entry" (below every key).
__device__ __forceinline__ unsigned long long rank_key(float score, int64_t index) {
  float s = score != score ? -INFINITY : score + 0.0f;  // + 0.0f turns -0 into +0
  const uint32_t bits = __float_as_uint(s);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // monotonic in s
  return (static_cast<unsigned long long>(ordered) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(index));
}
__device__ __forceinline__ int64_t key_index(unsigned long long key) {
  return static_cast<int64_t>(static_cast<uint32_t>(~static_cast<uint32_t>(key & 0xffffffffull)));
}

// Sorts kN keys (with their scores) in shared memory, largest key first: a bitonic network, kThreads threads.
template <int kN, int kThreads>
__device__ void block_sort_descending(unsigned long long* keys, float* scores) {
  static_assert((kN & (kN - 1)) == 0, "bitonic sort needs a power of two");
  for (int size = 2; size <= kN; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < kN / 2; i += kThreads) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;  // pairs (lo, lo + stride) within a block
        const bool descending = (lo & size) == 0;
        const unsigned long long a = keys[lo], b = keys[hi];
        if ((a < b) == descending) {
          keys[lo] = b, keys[hi] = a;
          const float t = scores[lo];
          scores[lo] = scores[hi], scores[hi] = t;
        }
      }
    }
  }
  __syncthreads();
}

// Merges a sorted running list (run_keys/run_scores, k entries, largest first, key 0 = empty) with kN sorted chunk
// keys in shared memory into the best k, written to out_keys/out_scores (merge path: output i finds its split by a
// binary search, so threads write disjoint outputs; ties cannot happen between distinct keys).
template <int kN, int kThreads>
__device__ void block_merge_topk(const unsigned long long* run_keys, const float* run_scores, int64_t k,
                                 const unsigned long long* chunk_keys, const float* chunk_scores,
                                 unsigned long long* out_keys, float* out_scores) {
  for (int64_t i = threadIdx.x; i < k; i += kThreads) {
    int64_t lo = i - kN > 0 ? i - kN : 0, hi = i < k ? i : k;
    while (lo < hi) {  // the number of running entries among the best i
      const int64_t mid = (lo + hi) / 2;
      if (run_keys[mid] >= chunk_keys[i - mid - 1])
        lo = mid + 1;
      else
        hi = mid;
    }
    const int64_t a = lo, b = i - lo;
    if (b >= kN || (a < k && run_keys[a] >= chunk_keys[b])) {
      out_keys[i] = run_keys[a];
      out_scores[i] = run_scores[a];
    } else {
      out_keys[i] = chunk_keys[b];
      out_scores[i] = chunk_scores[b];
    }
  }
}

// ---- running top-k over chunks (common.h, TopkWorkspace) ---------------------------------------------------------
constexpr int kTopkMergeThreads = 256;

// One block per query of the group: the chunk's rank keys sorted, merged into the running top-k (in -> out).
// Candidates first + i with mask[first + i] == 0 get no key (never returned), like rows past the chunk.
template <int kChunk, int kThreads>
__global__ void __launch_bounds__(kThreads)
    topk_merge_kernel(const float* chunk_scores, int64_t chunk_count, int64_t first, const uint8_t* mask,
                      const unsigned long long* in_keys, const float* in_scores, unsigned long long* out_keys,
                      float* out_scores, int64_t k) {
  __shared__ unsigned long long s_keys[kChunk];
  __shared__ float s_scores[kChunk];
  const int64_t q = blockIdx.x;
  const float* scores = chunk_scores + q * chunk_count;
  for (int i = threadIdx.x; i < kChunk; i += kThreads) {
    const bool real = i < chunk_count && (mask == nullptr || mask[first + i] != 0);
    s_scores[i] = real ? scores[i] : -INFINITY;
    s_keys[i] = real ? rank_key(scores[i], first + i) : 0ull;
  }
  block_sort_descending<kChunk, kThreads>(s_keys, s_scores);
  block_merge_topk<kChunk, kThreads>(in_keys + q * k, in_scores + q * k, k, s_keys, s_scores, out_keys + q * k,
                                      out_scores + q * k);
}

template <int kThreads>
__global__ void topk_write_kernel(const unsigned long long* keys, const float* scores, int64_t count,
                                  float* top_scores, int64_t* top_indices) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool real = keys[i] != 0ull;
    top_scores[i] = real ? scores[i] : -INFINITY;
    top_indices[i] = real ? key_index(keys[i]) : -1;
  }
}

// Merges a chunk of scores [queries, chunk_count] (candidates first .. first + chunk_count) into the running lists.
inline void launch_topk_merge(const float* chunk_scores, int64_t queries, int64_t chunk_count, int64_t first,
                              const uint8_t* mask, const unsigned long long* in_keys, const float* in_scores,
                              unsigned long long* out_keys, float* out_scores, int64_t k, cudaStream_t stream) {
  topk_merge_kernel<static_cast<int>(kTopkDocChunk), kTopkMergeThreads>
      <<<static_cast<int>(queries), kTopkMergeThreads, 0, stream>>>(chunk_scores, chunk_count, first, mask, in_keys,
                                                                   in_scores, out_keys, out_scores, k);
  TOKENSET_CHECK_LAUNCH("top-k merge");
}

// Writes the running lists as (score, index), empty entries as (-inf, -1).
inline void launch_topk_write(const unsigned long long* keys, const float* scores, int64_t count, float* top_scores,
                              int64_t* top_indices, cudaStream_t stream) {
  topk_write_kernel<256><<<grid_for(count, 256), 256, 0, stream>>>(keys, scores, count, top_scores, top_indices);
  TOKENSET_CHECK_LAUNCH("top-k write");
}

}  // namespace cuda
}  // namespace tokenset
