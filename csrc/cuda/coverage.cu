// Greedy maximum coverage on the GPU: one block per set. Threads own columns and sum their gains over the rows in
// row order, skipping rows that can no longer gain, exactly as the CPU (the same float32 operations in the same
// order: identical gains and picks); a block argmax per pick; then threads over rows raise best.
#include "common.cuh"
#include "tokenset/coverage.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) coverage_kernel(const CoverageParams p, float* best, float* row_max,
                                                            uint8_t* picked) {
  __shared__ float s_value[kThreads / 32];
  __shared__ int64_t s_index[kThreads / 32];
  __shared__ float pick_value;
  __shared__ int64_t pick_index;
  const int64_t set = blockIdx.x;
  const int64_t rows = p.rows[set], cols = p.cols[set];
  const int64_t picks = imin(p.k[set], cols);
  if (picks <= 0) return;
  const float* base = p.matrix.ptr<const float>() + set * p.matrix.strides[0];
  const int64_t row_stride = p.matrix.strides[1];
  float* bst = best + set * p.matrix.shape[1];
  float* top = row_max + set * p.matrix.shape[1];
  uint8_t* done = picked + set * p.matrix.shape[2];
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) {
    const float* row = base + r * row_stride;
    float m = 0.0f;
    for (int64_t j = 0; j < cols; ++j) m = row[j] > m ? row[j] : m;
    bst[r] = 0.0f;
    top[r] = m;
  }
  for (int64_t j = threadIdx.x; j < cols; j += kThreads) done[j] = 0;
  __syncthreads();
  for (int64_t t = 0; t < picks; ++t) {
    float v = 0.0f;
    int64_t i = -1;
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) {
      if (done[j]) continue;
      float g = 0.0f;
      for (int64_t r = 0; r < rows; ++r) {
        const float b = bst[r];
        if (!(b < top[r])) continue;  // saturated: adds exactly 0
        const float diff = __fsub_rn(base[r * row_stride + j], b);
        g = __fadd_rn(g, diff > 0.0f ? diff : 0.0f);
      }
      keep_best(g, j, v, i);
    }
    block_best<kThreads / 32>(v, i, s_value, s_index, &pick_value, &pick_index);
    if (threadIdx.x == 0) {
      p.indices[set * p.max_k + t] = pick_index;
      if (p.gains) p.gains[set * p.max_k + t] = pick_value;
      done[pick_index] = 1;
    }
    __syncthreads();
    const int64_t pick = pick_index;
    for (int64_t r = threadIdx.x; r < rows; r += kThreads) {
      const float c = base[r * row_stride + pick];
      if (bst[r] < top[r] && c > bst[r]) bst[r] = c;
    }
    __syncthreads();
  }
}

}  // namespace

void coverage(const CoverageParams& p, const Launch& launch) {
  validate(p);
  const int64_t b = p.matrix.shape[0], size = b * p.max_k;
  if (size == 0) return;
  TOKENSET_CHECK(b < (int64_t(1) << 31), ValueError, "coverage: at most 2^31 - 1 sets per call on the GPU");
  const int64_t needed = workspace_bytes(p);
  TOKENSET_CHECK(needed == 0 || (launch.workspace != nullptr && launch.workspace_bytes >= needed), ValueError,
                 "coverage: the CUDA workspace is missing or smaller than workspace_bytes()");
  cudaStream_t stream = stream_of(launch);
  fill_picks(p.indices, p.gains, size, stream);
  WorkspaceCarver carve(launch.workspace);
  float* best = carve.take<float>(b * p.matrix.shape[1]);
  float* row_max = carve.take<float>(b * p.matrix.shape[1]);
  uint8_t* picked = carve.take<uint8_t>(b * p.matrix.shape[2]);
  coverage_kernel<<<static_cast<unsigned>(b), kThreads, 0, stream>>>(p, best, row_max, picked);
  TOKENSET_CHECK_LAUNCH("coverage");
}

}  // namespace cuda
}  // namespace tokenset
