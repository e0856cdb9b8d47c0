// MaxSim on the GPU: score(q, D) = sum_i max_j <q_i, d_j>, one thread block per (query, document) pair.
//
// A block scores up to 32 query tokens against 64 document tokens at a time: both tiles are staged in shared memory
// (k in chunks of 64, zero-padded past the set ends), multiplied with tensor cores (WMMA 16x16x16, float32
// accumulators) for float16/bfloat16 or with FMAs for float32, written to a 32x64 float tile, and folded into a
// running max held in registers by warp 0 (one lane per query token). The similarity matrix never leaves the SM.
// Same semantics as the CPU kernel: empty document -inf, NaN propagates, argmax ties to the lower index.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "tokenset/maxsim.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kThreads = 128;    // 4 warps
constexpr int kQueryTile = 32;   // query tokens per pass (two 16-row WMMA tiles)
constexpr int kDocTile = 64;     // document tokens per tile (16 per warp)
constexpr int kChunk = 64;       // k elements staged per step

template <typename T>
struct Staged {  // shared-memory element type and row pitch (elements) of the staged tiles
  static constexpr bool kTensorCores = true;
  static constexpr int kPitch = kChunk + 8;  // multiple of 8 elements (WMMA), shifts banks between rows
};
template <>
struct Staged<float> {
  static constexpr bool kTensorCores = false;
  static constexpr int kPitch = kChunk + 1;  // odd pitch: column reads are conflict-free
};

constexpr int kScorePitch = kDocTile + 4;  // float tile pitch, multiple of 4 (WMMA store)

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <typename T>
__device__ __forceinline__ T zero_of() { return T(0.0f); }

// Copies rows [row0, row0 + rows) x columns [k0, k0 + kChunk) of a strided matrix into shared memory, zero outside
// `valid_rows` / `dim`. kVec: 16-byte loads (checked on the host: dim, stride and base are multiples of 16 bytes).
template <typename T, bool kVec, int kRows>
__device__ __forceinline__ void stage(T* dst, const T* src, int64_t stride, int valid_rows, int64_t k0, int64_t dim) {
  constexpr int kPitch = Staged<T>::kPitch;
  if constexpr (kVec && Staged<T>::kTensorCores) {
    constexpr int kPerVec = 16 / sizeof(T);
    constexpr int kVecsPerRow = kChunk / kPerVec;
    for (int e = threadIdx.x; e < kRows * kVecsPerRow; e += kThreads) {
      const int r = e / kVecsPerRow, c = (e % kVecsPerRow) * kPerVec;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (r < valid_rows && k0 + c < dim) v = *reinterpret_cast<const uint4*>(src + r * stride + k0 + c);
      // Pitch is a multiple of 8 elements (16 bytes): the store is aligned.
      *reinterpret_cast<uint4*>(dst + r * kPitch + c) = v;
    }
  } else {
    for (int e = threadIdx.x; e < kRows * kChunk; e += kThreads) {
      const int r = e / kChunk, c = e % kChunk;
      dst[r * kPitch + c] = (r < valid_rows && k0 + c < dim) ? src[r * stride + k0 + c] : zero_of<T>();
    }
  }
}

template <typename T, bool kVec, bool kArgmax>
__global__ void __launch_bounds__(kThreads) maxsim_kernel(MaxsimParams p, int64_t pairs) {
  constexpr int kPitch = Staged<T>::kPitch;
  __shared__ __align__(32) T s_query[kQueryTile * kPitch];
  __shared__ __align__(32) T s_doc[kDocTile * kPitch];
  __shared__ __align__(32) float s_scores[kQueryTile * kScorePitch];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t nq = p.queries.count, columns = p.candidates ? p.num_candidates : p.documents.count;
  const int64_t dim = p.queries.dim;
  const T* q_values = static_cast<const T*>(p.queries.values);
  const T* d_values = static_cast<const T*>(p.documents.values);

  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    int64_t q, col, doc;
    if (p.candidates) {
      q = pair / columns;
      col = pair % columns;
      doc = p.candidates[pair];
    } else {  // document-major: the blocks of one document run close together and share it in L2
      doc = pair / nq;
      q = pair % nq;
      col = doc;
    }
    const int64_t out = q * columns + col;
    const int64_t q_begin = p.queries.offsets[q], q_len = p.queries.offsets[q + 1] - q_begin;
    int32_t* argmax = kArgmax ? p.argmax + out * p.queries.max_length : nullptr;
    if (kArgmax)
      for (int64_t i = q_len + threadIdx.x; i < p.queries.max_length; i += kThreads) argmax[i] = -1;
    const bool bad_doc = doc < -1 || doc >= p.documents.count;  // validated on the host; never read past the end
    const int64_t d_begin = (doc >= 0 && !bad_doc) ? p.documents.offsets[doc] : 0;
    const int64_t d_len = (doc >= 0 && !bad_doc) ? p.documents.offsets[doc + 1] - d_begin : 0;
    if (d_len == 0) {
      if (threadIdx.x == 0) p.scores[out] = bad_doc ? NAN : -INFINITY;
      if (kArgmax)
        for (int64_t i = threadIdx.x; i < q_len; i += kThreads) argmax[i] = -1;
      continue;
    }

    float total = 0.0f;  // lane 0 of warp 0
    for (int64_t qc = 0; qc < q_len; qc += kQueryTile) {
      const int q_rows = static_cast<int>(imin(kQueryTile, q_len - qc));
      float run_max = -INFINITY;  // warp 0, lane r: query token qc + r
      int32_t run_arg = 0;        // all similarities -inf: the first token, as numpy's argmax
      bool nan_seen = false;
      const T* q_src = q_values + (q_begin + qc) * p.queries.row_stride;
      for (int64_t j0 = 0; j0 < d_len; j0 += kDocTile) {
        const int d_rows = static_cast<int>(imin(kDocTile, d_len - j0));
        const T* d_src = d_values + (d_begin + j0) * p.documents.row_stride;
        if constexpr (Staged<T>::kTensorCores) {
          using namespace nvcuda;
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
          wmma::fill_fragment(acc0, 0.0f);
          wmma::fill_fragment(acc1, 0.0f);
          for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
            __syncthreads();
            stage<T, kVec, kQueryTile>(s_query, q_src, p.queries.row_stride, q_rows, k0, dim);
            stage<T, kVec, kDocTile>(s_doc, d_src, p.documents.row_stride, d_rows, k0, dim);
            __syncthreads();
            const int k_steps = static_cast<int>(imin(kChunk, dim - k0) + 15) / 16;
            for (int kk = 0; kk < k_steps; ++kk) {
              wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a0, a1;
              wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;  // B(k, j) = doc[j][k]
              wmma::load_matrix_sync(a0, s_query + kk * 16, kPitch);
              wmma::load_matrix_sync(a1, s_query + 16 * kPitch + kk * 16, kPitch);
              wmma::load_matrix_sync(b, s_doc + warp * 16 * kPitch + kk * 16, kPitch);
              wmma::mma_sync(acc0, a0, b, acc0);
              wmma::mma_sync(acc1, a1, b, acc1);
            }
          }
          wmma::store_matrix_sync(s_scores + warp * 16, acc0, kScorePitch, wmma::mem_row_major);
          wmma::store_matrix_sync(s_scores + 16 * kScorePitch + warp * 16, acc1, kScorePitch, wmma::mem_row_major);
        } else {
          // float32: thread t computes doc column t % 64 for query rows 16 * (t / 64) .. +16.
          const int c = threadIdx.x % kDocTile, r0 = (threadIdx.x / kDocTile) * 16;
          float acc[16];
#pragma unroll
          for (int r = 0; r < 16; ++r) acc[r] = 0.0f;
          for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
            __syncthreads();
            stage<T, kVec, kQueryTile>(s_query, q_src, p.queries.row_stride, q_rows, k0, dim);
            stage<T, kVec, kDocTile>(s_doc, d_src, p.documents.row_stride, d_rows, k0, dim);
            __syncthreads();
            const int k_len = static_cast<int>(imin(kChunk, dim - k0));
            for (int k = 0; k < k_len; ++k) {
              const float dv = s_doc[c * kPitch + k];
#pragma unroll
              for (int r = 0; r < 16; ++r) acc[r] = fmaf(s_query[(r0 + r) * kPitch + k], dv, acc[r]);
            }
          }
#pragma unroll
          for (int r = 0; r < 16; ++r) s_scores[(r0 + r) * kScorePitch + c] = acc[r];
        }
        __syncthreads();
        if (warp == 0) {
          for (int c = 0; c < d_rows; ++c) {  // in order: strictly greater keeps the lower index on ties
            const float v = s_scores[lane * kScorePitch + c];
            if (v != v) {
              nan_seen = true;
            } else if (v > run_max) {
              run_max = v;
              if (kArgmax) run_arg = static_cast<int32_t>(j0 + c);
            }
          }
        }
        // s_scores is rewritten only after the next tile's two __syncthreads, which warp 0 reaches after this loop.
      }
      if (warp == 0) {
        float v = lane < q_rows ? (nan_seen ? NAN : run_max) : 0.0f;
        if (kArgmax && lane < q_rows) argmax[qc + lane] = run_arg;
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
        total += v;
      }
    }
    if (threadIdx.x == 0) p.scores[out] = total;
    __syncthreads();  // shared tiles are reused by the next pair
  }
}

template <typename T, bool kVec>
void launch_typed(const MaxsimParams& p, int64_t pairs, int grid, cudaStream_t stream) {
  if (p.argmax)
    maxsim_kernel<T, kVec, true><<<grid, kThreads, 0, stream>>>(p, pairs);
  else
    maxsim_kernel<T, kVec, false><<<grid, kThreads, 0, stream>>>(p, pairs);
}

template <typename T>
void launch(const MaxsimParams& p, int64_t pairs, int grid, cudaStream_t stream) {
  const int64_t bytes = sizeof(T);
  const bool vec = (p.queries.dim * bytes) % 16 == 0 && (p.queries.row_stride * bytes) % 16 == 0 &&
                   (p.documents.row_stride * bytes) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.queries.values) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(p.documents.values) % 16 == 0;
  if (vec)
    launch_typed<T, true>(p, pairs, grid, stream);
  else
    launch_typed<T, false>(p, pairs, grid, stream);
}

}  // namespace

void maxsim(const MaxsimParams& p, void* stream_handle) {
  check_same_dim(p);
  if (p.queries.dtype != p.documents.dtype)
    throw TypeError("on the GPU, queries and documents must have the same dtype");
  const int64_t columns = p.candidates ? p.num_candidates : p.documents.count;
  const int64_t pairs = p.queries.count * columns;
  if (pairs == 0) return;
  const int grid = static_cast<int>(pairs < (1 << 30) ? pairs : (1 << 30));
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  switch (p.documents.dtype) {
    case DType::Float32: launch<float>(p, pairs, grid, stream); break;
    case DType::Float16: launch<__half>(p, pairs, grid, stream); break;
    case DType::BFloat16: launch<__nv_bfloat16>(p, pairs, grid, stream); break;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("tokenset maxsim CUDA launch failed: ") + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace tokenset
