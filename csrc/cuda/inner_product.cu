// Inner-product top-k on the GPU: the stored vectors are scored in chunks of kTopkDocChunk for a group of queries
// (one warp per (query, vector): lanes stride the dimension, float32 accumulation, shuffle reduction) and merged into
// each query's running top-k with the shared block merge (common.cuh), masked vectors getting no rank key.
#include "common.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/inner_product.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kWarps = 8;

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    inner_product_chunk_kernel(const float* queries, int64_t query_stride, const T* vectors, int64_t row_stride,
                               int64_t dim, int64_t first, int64_t count, float* chunk_scores) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t q = blockIdx.y;
  if (row >= count) return;
  const float* query = queries + q * query_stride;
  const T* v = vectors + (first + row) * row_stride;
  float acc = 0.0f;
  for (int64_t k = lane; k < dim; k += 32) acc = fmaf(query[k], to_float(v[k]), acc);
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  if (lane == 0) chunk_scores[q * count + row] = acc;
}

template <typename T>
void run(const InnerProductParams& p, const Launch& launch) {
  const int64_t nq = p.queries.shape[0], n = p.vectors.shape[0], dim = p.queries.shape[1], k = p.k;
  cudaStream_t stream = stream_of(launch);
  int64_t needed = 0;
  const TopkWorkspace w = carve_topk_workspace(nq, k, launch.workspace, &needed);
  TOKENSET_CHECK(launch.workspace != nullptr && launch.workspace_bytes >= needed, ValueError,
                 "inner_product_topk: the CUDA workspace is missing or smaller than workspace_bytes()");
  const float* queries = p.queries.ptr<const float>();
  const int64_t query_stride = nq > 1 ? p.queries.strides[0] : dim;
  const T* vectors = static_cast<const T*>(p.vectors.data);
  const int64_t row_stride = n > 1 ? p.vectors.strides[0] : dim;
  for (int64_t q0 = 0; q0 < nq; q0 += w.group) {
    const int64_t group = imin(w.group, nq - q0);
    TOKENSET_CUDA_CHECK(cudaMemsetAsync(w.keys[0], 0, sizeof(unsigned long long) * group * k, stream));
    int current = 0;
    for (int64_t first = 0; first < n; first += kTopkDocChunk) {
      const int64_t count = imin(kTopkDocChunk, n - first);
      const dim3 grid(static_cast<unsigned>((count + kWarps - 1) / kWarps), static_cast<unsigned>(group));
      inner_product_chunk_kernel<T><<<grid, kWarps * 32, 0, stream>>>(queries + q0 * query_stride, query_stride,
                                                                      vectors, row_stride, dim, first, count,
                                                                      w.chunk_scores);
      TOKENSET_CHECK_LAUNCH("inner-product scores");
      launch_topk_merge(w.chunk_scores, group, count, first, p.mask, w.keys[current], w.scores[current],
                        w.keys[1 - current], w.scores[1 - current], k, stream);
      current = 1 - current;
    }
    launch_topk_write(w.keys[current], w.scores[current], group * k, p.top_scores + q0 * k, p.top_indices + q0 * k,
                      stream);
  }
}

}  // namespace

void inner_product_topk(const InnerProductParams& p, const Launch& launch) {
  validate(p);
  TOKENSET_CHECK(p.vectors.dtype != DType::Int8, TypeError,
                 "int8 vectors are scanned on the CPU; on a GPU store float16 or bfloat16 vectors");
  if (p.queries.shape[0] == 0) return;
  TOKENSET_FLOAT_SWITCH(p.vectors.dtype, kDType, [&] { run<cuda_type_t<kDType>>(p, launch); });
}

}  // namespace cuda
}  // namespace tokenset
