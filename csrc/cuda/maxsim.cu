// MaxSim on the GPU: score(q, D) = sum_i max_j <q_i, d_j>, one thread block per (query, document) pair.
//
// A block scores up to 32 query tokens against 64 document tokens at a time: both tiles are staged in shared memory
// (k in chunks of 64, zero-padded past the set ends), multiplied with tensor cores (WMMA 16x16x16, float32
// accumulators) for float16/bfloat16 or with FMAs for float32, written to a 32x64 float tile, and folded into a
// running max held in registers by warp 0 (one lane per query token). The similarity matrix never leaves the SM.
// Same semantics as the CPU kernel: empty document -inf, NaN propagates, argmax ties to the lower index; float32
// dots are FMAs in k order and the maxima are summed in token order, so float32 scores equal the CPU's bit for bit.
//
// Residual codes (tokenset.ResidualCodes) have their own kernel below: the CPU's numbers, computed per tile.
//
// Top-k (maxsim_topk): documents are scored in chunks of kTopkDocChunk for a group of queries into the workspace,
// then one block per query sorts the chunk's ranking keys and merges them into the query's running top-k
// (double-buffered in the workspace). Memory: the group's chunk scores and running lists, never [nq, nd].
#include <mma.h>

#include <cmath>

#include "common.cuh"
#include "tokenset/dispatch.h"
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

template <typename T, bool kVec, int kRows>
__device__ __forceinline__ void stage(T* dst, const T* src, int64_t stride, int valid_rows, int64_t k0, int64_t dim) {
  load_tile<T, kRows, kChunk, Staged<T>::kPitch, kThreads, kVec && Staged<T>::kTensorCores>(dst, src, stride,
                                                                                          valid_rows, k0, dim);
}

// Where block item `pair` reads and writes: query, output column, document (-1: no candidate), the output slot, and
// the document's rows (none for -1 or an index outside the batch, which validate() has refused: bad_doc, never read).
struct PairPosition {
  int64_t q, col, doc, out, q_begin, q_len, d_begin, d_len;
  bool bad_doc;
};

__device__ __forceinline__ PairPosition pair_position(const MaxsimParams& p, int64_t pair) {
  PairPosition at;
  const int64_t nq = p.queries.count, columns = p.columns();
  if (p.candidates) {
    at.q = pair / columns;
    at.col = pair % columns;
    at.doc = p.candidates[pair];
  } else {  // document-major: the blocks of one document run close together and share it in L2
    at.doc = pair / nq;
    at.q = pair % nq;
    at.col = at.doc;
  }
  at.out = at.q * columns + at.col;
  at.q_begin = p.queries.offsets[at.q];
  at.q_len = p.queries.offsets[at.q + 1] - at.q_begin;
  at.bad_doc = at.doc < -1 || at.doc >= p.documents.count;
  const bool rows = at.doc >= 0 && !at.bad_doc;
  at.d_begin = rows ? p.documents.offsets[at.doc] : 0;
  at.d_len = rows ? p.documents.offsets[at.doc + 1] - at.d_begin : 0;
  return at;
}

template <typename T, bool kVec, bool kArgmax>
__global__ void __launch_bounds__(kThreads) maxsim_kernel(MaxsimParams p, int64_t pairs) {
  constexpr int kPitch = Staged<T>::kPitch;
  __shared__ __align__(32) T s_query[kQueryTile * kPitch];
  __shared__ __align__(32) T s_doc[kDocTile * kPitch];
  __shared__ __align__(32) float s_scores[kQueryTile * kScorePitch];
  __shared__ float s_maxima[kQueryTile];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t dim = p.queries.dim();
  const int64_t q_stride = p.queries.row_stride(), d_stride = p.documents.row_stride();
  const T* q_values = p.queries.values.ptr<const T>();
  const T* d_values = p.documents.values.ptr<const T>();

  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const PairPosition at = pair_position(p, pair);
    const int64_t out = at.out, q_begin = at.q_begin, q_len = at.q_len, d_begin = at.d_begin, d_len = at.d_len;
    const bool bad_doc = at.bad_doc;
    int32_t* argmax = kArgmax ? p.argmax + out * p.queries.max_length : nullptr;
    if (kArgmax)
      for (int64_t i = q_len + threadIdx.x; i < p.queries.max_length; i += kThreads) argmax[i] = -1;
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
      const T* q_src = q_values + (q_begin + qc) * q_stride;
      for (int64_t j0 = 0; j0 < d_len; j0 += kDocTile) {
        const int d_rows = static_cast<int>(imin(kDocTile, d_len - j0));
        const T* d_src = d_values + (d_begin + j0) * d_stride;
        if constexpr (Staged<T>::kTensorCores) {
          using namespace nvcuda;
          wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
          wmma::fill_fragment(acc0, 0.0f);
          wmma::fill_fragment(acc1, 0.0f);
          for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
            __syncthreads();
            stage<T, kVec, kQueryTile>(s_query, q_src, q_stride, q_rows, k0, dim);
            stage<T, kVec, kDocTile>(s_doc, d_src, d_stride, d_rows, k0, dim);
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
            stage<T, kVec, kQueryTile>(s_query, q_src, q_stride, q_rows, k0, dim);
            stage<T, kVec, kDocTile>(s_doc, d_src, d_stride, d_rows, k0, dim);
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
        s_maxima[lane] = nan_seen ? NAN : run_max;
        if (kArgmax && lane < q_rows) argmax[qc + lane] = run_arg;
        __syncwarp();
        if (lane == 0)  // in token order, as the CPU
          for (int r = 0; r < q_rows; ++r) total += s_maxima[r];
        __syncwarp();
      }
    }
    if (threadIdx.x == 0) p.scores[out] = total;
    __syncthreads();  // shared tiles are reused by the next pair
  }
}


// ---- residual codes -------------------------------------------------------------------------------------------------
// float32 queries against residual codes (maxsim.h): one block per (query, document) pair, 32 query tokens x 64
// document tokens per tile, k in chunks of 64. Thread t owns document token t % 64 for 16 query rows and keeps, per
// row, the centroid score <q_i, C_id> as an FMA chain in k order and the exact int32 dot product of the int8 query with
// the token's int8 bucket weights; sim = n * (cs + f * float(dot)) with explicitly rounded steps. The CPU computes
// the same numbers in the same order (its centroid table is the same chains), so the scores are bit-identical.
struct QuantizedWeights {
  int8_t codes[16];
  float scale;
};

// tokenset.quantize's rule (the CPU kernel's quantize_row): s = max |x| / 127, q = rint(x / s) in [-127, 127].
inline QuantizedWeights quantize_weights(const ResidualDocuments& r) {
  QuantizedWeights w{};
  const int levels = 1 << r.bits;
  float largest = 0.0f;
  for (int j = 0; j < levels; ++j) largest = std::fabs(r.bucket_weights[j]) > largest ? std::fabs(r.bucket_weights[j])
                                                                                        : largest;
  w.scale = largest / 127.0f;
  for (int j = 0; j < levels; ++j) {
    float code = w.scale > 0.0f ? std::nearbyint(r.bucket_weights[j] / w.scale) : 0.0f;
    code = code > 127.0f ? 127.0f : (code < -127.0f ? -127.0f : code);
    w.codes[j] = static_cast<int8_t>(code);
  }
  return w;
}

constexpr int kResidualPitch = kChunk + 1;

__global__ void __launch_bounds__(kThreads) residual_maxsim_kernel(MaxsimParams p, int64_t pairs,
                                                                    QuantizedWeights weights) {
  __shared__ float s_query[kQueryTile * kResidualPitch];
  __shared__ int8_t s_query8[kQueryTile * kResidualPitch];
  __shared__ float s_centroid[kDocTile * kResidualPitch];
  __shared__ int8_t s_weight[kDocTile * kResidualPitch];
  __shared__ float s_scale[kQueryTile];
  __shared__ float s_scores[kQueryTile * kScorePitch];
  __shared__ float s_maxima[kQueryTile];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t dim = p.queries.dim();
  const int64_t q_stride = p.queries.row_stride(), d_stride = p.documents.row_stride();
  const int bits = p.residual.bits;
  const uint32_t centroids = static_cast<uint32_t>(p.residual.num_centroids);
  const float* q_values = p.queries.values.ptr<const float>();
  const uint8_t* codes = static_cast<const uint8_t*>(p.documents.values.data);
  const float weight_scale = weights.scale;

  for (int64_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const PairPosition at = pair_position(p, pair);
    const int64_t out = at.out, q_begin = at.q_begin, q_len = at.q_len, d_begin = at.d_begin, d_len = at.d_len;
    const bool bad_doc = at.bad_doc;
    if (d_len == 0) {
      if (threadIdx.x == 0) p.scores[out] = bad_doc ? NAN : -INFINITY;
      continue;
    }
    float total = 0.0f;
    for (int64_t qc = 0; qc < q_len; qc += kQueryTile) {
      const int q_rows = static_cast<int>(imin(kQueryTile, q_len - qc));
      const float* q_src = q_values + (q_begin + qc) * q_stride;
      // Each query token's int8 scale: warp w reduces rows w, w + 4, ...
      for (int r = warp; r < kQueryTile; r += kThreads / 32) {
        float largest = 0.0f;
        if (r < q_rows)
          for (int64_t k = lane; k < dim; k += 32) largest = fmaxf(largest, fabsf(q_src[r * q_stride + k]));
        for (int offset = 16; offset > 0; offset /= 2) largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest,
                                                                                                offset));
        if (lane == 0) s_scale[r] = __fdiv_rn(largest, 127.0f);
      }
      float run_max = -INFINITY;  // warp 0, lane r
      for (int64_t j0 = 0; j0 < d_len; j0 += kDocTile) {
        const int d_rows = static_cast<int>(imin(kDocTile, d_len - j0));
        const int c = threadIdx.x % kDocTile, r0 = (threadIdx.x / kDocTile) * 16;
        float cs[16];
        int dot[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
          cs[r] = 0.0f;
          dot[r] = 0;
        }
        for (int64_t k0 = 0; k0 < dim; k0 += kChunk) {
          const int k_len = static_cast<int>(imin(kChunk, dim - k0));
          __syncthreads();
          for (int e = threadIdx.x; e < kQueryTile * kChunk; e += kThreads) {
            const int r = e / kChunk, k = e % kChunk;
            const float x = (r < q_rows && k < k_len) ? q_src[r * q_stride + k0 + k] : 0.0f;
            const float scale = s_scale[r];
            float code = scale > 0.0f ? rintf(__fdiv_rn(x, scale)) : 0.0f;
            code = fminf(fmaxf(code, -127.0f), 127.0f);
            s_query[r * kResidualPitch + k] = x;
            s_query8[r * kResidualPitch + k] = static_cast<int8_t>(code);
          }
          for (int e = threadIdx.x; e < kDocTile * kChunk; e += kThreads) {
            const int j = e / kChunk, k = e % kChunk;
            float centroid_value = 0.0f;
            int weight = 0;
            if (j < d_rows && k < k_len) {
              const int64_t row = d_begin + j0 + j;
              const uint32_t id = static_cast<uint32_t>(p.residual.centroid_ids[row]);
              centroid_value = p.residual.centroids[static_cast<int64_t>(id < centroids ? id : 0) * dim + k0 + k];
              const uint8_t* row_codes = codes + row * d_stride;
              int code = 0;
              for (int b = 0; b < bits; ++b) {
                const int64_t position = (k0 + k) * bits + b;
                code |= ((row_codes[position >> 3] >> (7 - (position & 7))) & 1) << b;
              }
              weight = weights.codes[code];
            }
            s_centroid[j * kResidualPitch + k] = centroid_value;
            s_weight[j * kResidualPitch + k] = static_cast<int8_t>(weight);
          }
          __syncthreads();
          for (int k = 0; k < k_len; ++k) {
            const float cv = s_centroid[c * kResidualPitch + k];
            const int wv = s_weight[c * kResidualPitch + k];
#pragma unroll
            for (int r = 0; r < 16; ++r) {
              cs[r] = fmaf(s_query[(r0 + r) * kResidualPitch + k], cv, cs[r]);
              dot[r] += static_cast<int>(s_query8[(r0 + r) * kResidualPitch + k]) * wv;
            }
          }
        }
        const float norm = c < d_rows ? p.documents.scales[d_begin + j0 + c] : 0.0f;
#pragma unroll
        for (int r = 0; r < 16; ++r) {
          const float factor = __fmul_rn(s_scale[r0 + r], weight_scale);
          s_scores[(r0 + r) * kScorePitch + c] =
              __fmul_rn(__fadd_rn(cs[r], __fmul_rn(__int2float_rn(dot[r]), factor)), norm);
        }
        __syncthreads();
        if (warp == 0)
          for (int cc = 0; cc < d_rows; ++cc) run_max = fmaxf(run_max, s_scores[lane * kScorePitch + cc]);
      }
      if (warp == 0) {
        s_maxima[lane] = run_max;
        __syncwarp();
        if (lane == 0)
          for (int r = 0; r < q_rows; ++r) total += s_maxima[r];
        __syncwarp();
      }
    }
    if (threadIdx.x == 0) p.scores[out] = total;
    __syncthreads();
  }
}

template <typename T>
bool vector_loads(const MaxsimParams& p) {
  const int64_t bytes = sizeof(T);
  return (p.queries.dim() * bytes) % 16 == 0 && (p.queries.row_stride() * bytes) % 16 == 0 &&
         (p.documents.row_stride() * bytes) % 16 == 0 && reinterpret_cast<uintptr_t>(p.queries.values.data) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.documents.values.data) % 16 == 0;
}

// Scores every (query, document) pair or candidate of `p` into p.scores (p.argmax when set).
void launch_scores(const MaxsimParams& p, cudaStream_t stream) {
  const int64_t pairs = p.queries.count * p.columns();
  if (pairs == 0) return;
  const int grid = grid_for(pairs, 1);
  if (p.residual.active()) {
    residual_maxsim_kernel<<<grid, kThreads, 0, stream>>>(p, pairs, quantize_weights(p.residual));
    TOKENSET_CHECK_LAUNCH("maxsim (residual codes)");
    return;
  }
  TOKENSET_FLOAT_SWITCH(p.documents.dtype(), kDType, [&] {
    using T = cuda_type_t<kDType>;
    TOKENSET_BOOL_SWITCH(vector_loads<T>(p), kVec, [&] {
      TOKENSET_BOOL_SWITCH(p.argmax != nullptr, kArgmax, [&] {
        maxsim_kernel<T, kVec, kArgmax><<<grid, kThreads, 0, stream>>>(p, pairs);
      });
    });
  });
  TOKENSET_CHECK_LAUNCH("maxsim");
}

void launch_topk(const MaxsimParams& p, const Launch& launch) {
  const int64_t nq = p.queries.count, nd = p.documents.count, k = p.k;
  if (nq == 0) return;
  cudaStream_t stream = stream_of(launch);
  int64_t needed = 0;
  const TopkWorkspace w = carve_topk_workspace(p, launch.workspace, &needed);
  TOKENSET_CHECK(launch.workspace != nullptr && launch.workspace_bytes >= needed, ValueError,
                 "maxsim_topk: the CUDA workspace is missing or smaller than workspace_bytes()");
  const int64_t group = w.group;
  float* chunk_scores = w.chunk_scores;
  unsigned long long* const* keys = w.keys;
  float* const* scores = w.scores;
  for (int64_t q0 = 0; q0 < nq; q0 += group) {
    const int64_t queries = imin(group, nq - q0);
    TOKENSET_CUDA_CHECK(cudaMemsetAsync(keys[0], 0, sizeof(unsigned long long) * queries * k, stream));
    int current = 0;
    for (int64_t d0 = 0; d0 < nd; d0 += kTopkDocChunk) {
      MaxsimParams chunk = p;  // the group's queries against documents d0 .. d0 + docs: offsets are absolute rows
      chunk.k = 0;
      chunk.top_scores = nullptr;
      chunk.top_indices = nullptr;
      chunk.queries.offsets += q0;
      chunk.queries.host_offsets += q0;
      chunk.queries.count = queries;
      chunk.documents.offsets += d0;
      chunk.documents.host_offsets += d0;
      chunk.documents.count = imin(kTopkDocChunk, nd - d0);
      chunk.scores = chunk_scores;
      launch_scores(chunk, stream);
      launch_topk_merge(chunk_scores, queries, chunk.documents.count, d0, nullptr, keys[current], scores[current],
                        keys[1 - current], scores[1 - current], k, stream);
      current = 1 - current;
    }
    launch_topk_write(keys[current], scores[current], queries * k, p.top_scores + q0 * k, p.top_indices + q0 * k,
                      stream);
  }
}

}  // namespace

void maxsim(const MaxsimParams& p, const Launch& launch) {
  validate(p);
  TOKENSET_CHECK(p.residual.active() || p.documents.dtype() != DType::Int8, TypeError,
                 "int8 documents (tokenset.Quantized) are scored on the CPU; on a GPU store float16 or bfloat16 "
                 "tokens (Quantized.dequantize(dtype=...))");
  if (p.topk())
    launch_topk(p, launch);
  else
    launch_scores(p, stream_of(launch));
}

}  // namespace cuda
}  // namespace tokenset
