// Nearest target token on the GPU: a thread per query token, over its target set, every pair summed in k order
// (distance.cuh: the CPU's bits). Two launches on the caller's stream: the targets' row stats (cosine), then the
// search. Correct, not tuned: each thread reads its targets from global memory (L1 / L2 serve the threads of a set),
// without shared-memory tiles or tensor cores (which would change the bits). Memory: one float per target token.
#include "common.cuh"
#include "distance.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/nearest.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kThreads = 128;

// 1 / ||y|| of target rows [row_begin, row_end) (absolute), into stats[row].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    target_stats_kernel(const Rows<T> rows, int64_t row_begin, int64_t row_end, float* stats) {
  for (int64_t r = row_begin + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < row_end;
       r += int64_t(gridDim.x) * blockDim.x) {
    const T* y = rows.values + r * rows.stride;
    float sq = 0.0f;
    for (int64_t k = 0; k < rows.dim; ++k) {
      const float v = to_float(y[k]);
      sq = fmaf(v, v, sq);
    }
    stats[r] = cosine_stat(sq);
  }
}

template <typename T, Metric M>
__global__ void __launch_bounds__(kThreads)
    nearest_kernel(const Rows<T> queries, const Rows<T> targets, int64_t row_begin, int64_t row_end,
                   const float* target_stats, int64_t* index, float* distance) {
  constexpr bool kL2 = M == Metric::L2;
  for (int64_t r = row_begin + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < row_end;
       r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t set = find_set(queries.offsets, queries.count, r);
    const T* x = queries.values + r * queries.stride;
    float stat = 0.0f;
    if (M == Metric::Cosine) {
      float sq = 0.0f;
      for (int64_t k = 0; k < queries.dim; ++k) {
        const float v = to_float(x[k]);
        sq = fmaf(v, v, sq);
      }
      stat = cosine_stat(sq);
    }
    const int64_t begin = targets.offsets[set], n = targets.offsets[set + 1] - begin;
    float best = INFINITY;
    int64_t arg = -1;
    for (int64_t j = 0; j < n; ++j) {
      const T* y = targets.values + (begin + j) * targets.stride;
      float sum = 0.0f;
      for (int64_t k = 0; k < queries.dim; ++k) sum = pair_step<kL2>(to_float(x[k]), to_float(y[k]), sum);
      const float d = distance_of<M>(sum, stat, M == Metric::Cosine ? target_stats[begin + j] : 0.0f, INFINITY);
      if (d < best) best = d, arg = j;  // strictly: the lowest index keeps a tie
    }
    if (arg < 0 && n > 0) arg = 0;  // every distance +inf (or NaN): the lowest index
    const int64_t out = r - row_begin;
    index[out] = arg;
    if (distance) distance[out] = best;
  }
}

template <typename T>
void run(const NearestParams& p, const Launch& launch) {
  const int64_t count = p.queries.count;
  const int64_t row_begin = p.queries.host_offsets[0], row_end = p.queries.host_offsets[count];
  const int64_t needed = workspace_bytes(p);
  TOKENSET_CHECK(needed == 0 || (launch.workspace != nullptr && launch.workspace_bytes >= needed), ValueError,
                 "nearest: the CUDA workspace is missing or smaller than workspace_bytes()");
  WorkspaceCarver carve(launch.workspace);  // the order of workspace_bytes()
  float* stats = carve.take<float>(p.targets.host_offsets[count]);
  const Rows<T> q{static_cast<const T*>(p.queries.values.data), p.queries.row_stride(), p.queries.dim(),
                  p.queries.offsets, count};
  const Rows<T> t{static_cast<const T*>(p.targets.values.data), p.targets.row_stride(), p.targets.dim(),
                  p.targets.offsets, count};
  const cudaStream_t stream = stream_of(launch);
  const int64_t t_begin = p.targets.host_offsets[0], t_end = p.targets.host_offsets[count];
  if (p.metric == Metric::Cosine && t_end > t_begin) {
    target_stats_kernel<T><<<grid_for(t_end - t_begin, kThreads), kThreads, 0, stream>>>(t, t_begin, t_end, stats);
    TOKENSET_CHECK_LAUNCH("nearest target stats");
  }
  const int grid = grid_for(row_end - row_begin, kThreads);
  switch (p.metric) {
    case Metric::L2:
      nearest_kernel<T, Metric::L2><<<grid, kThreads, 0, stream>>>(q, t, row_begin, row_end, stats, p.index,
                                                                    p.distance);
      break;
    case Metric::InnerProduct:
      nearest_kernel<T, Metric::InnerProduct><<<grid, kThreads, 0, stream>>>(q, t, row_begin, row_end, stats,
                                                                              p.index, p.distance);
      break;
    default:
      nearest_kernel<T, Metric::Cosine><<<grid, kThreads, 0, stream>>>(q, t, row_begin, row_end, stats, p.index,
                                                                        p.distance);
      break;
  }
  TOKENSET_CHECK_LAUNCH("nearest");
}

}  // namespace

void nearest(const NearestParams& p, const Launch& launch) {
  validate(p);
  if (nearest_rows(p) == 0) return;
  TOKENSET_FLOAT_SWITCH(p.queries.dtype(), kDType, [&] { run<cuda_type_t<kDType>>(p, launch); });
}

}  // namespace cuda
}  // namespace tokenset
