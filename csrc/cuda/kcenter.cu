// k-center on the GPU: one block per set. Warps stride the set's tokens and lanes stride the dimension (coalesced
// row reads, float32 accumulation, shuffle sums); each pick is one pass that updates the running minima in the
// workspace and ends in a block argmax (lowest index on ties), as the CPU driver. The most-isolated first pick gives
// each warp whole pivots (their nearest other token over the set), never an n x n matrix.
#include "common.cuh"
#include "tokenset/dispatch.h"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kWarps = 8;

template <typename T>
__device__ __forceinline__ const T* row_of(const T* base, int64_t stride, int64_t j) {
  return base + j * stride;
}

// <a, b> (kL2: ||a - b||^2) summed over the warp, the same value in every lane.
template <typename T, bool kL2>
__device__ __forceinline__ float warp_pair(const T* a, const T* b, int64_t dim, int lane) {
  float acc = 0.0f;
  for (int64_t k = lane; k < dim; k += 32) {
    const float x = to_float(a[k]), y = to_float(b[k]);
    if (kL2) {
      const float d = x - y;
      acc = fmaf(d, d, acc);
    } else {
      acc = fmaf(x, y, acc);
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  return acc;
}

// The distance (squared for l2) from the raw pair value, symmetric in (a, b) bit for bit (the lane sums of a pair
// run in the same order either way); NaN counts as -inf.
template <Metric M>
__device__ __forceinline__ float distance_of(float pair, float stat_a, float stat_b) {
  float d = M == Metric::Cosine ? 1.0f - pair * (stat_a * stat_b) : (M == Metric::L2 ? pair : -pair);
  return d != d ? -INFINITY : d;
}

template <typename T, Metric M>
__global__ void __launch_bounds__(kWarps * 32)
    kcenter_kernel(const KcenterParams p, float* min_distance, float* stats, uint8_t* picked) {
  constexpr bool kL2 = M == Metric::L2;
  __shared__ float s_value[kWarps];
  __shared__ int64_t s_index[kWarps];
  __shared__ float pick_value;
  __shared__ int64_t pick_index;
  const int64_t set = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t begin = p.tokens.offsets[set], n = p.tokens.offsets[set + 1] - begin;
  if (n == 0) return;
  const int64_t dim = p.tokens.dim(), stride = p.tokens.row_stride();
  const T* base = static_cast<const T*>(p.tokens.values.data) + begin * stride;
  float* mins = min_distance + begin;
  float* st = stats + begin;
  uint8_t* done = picked + begin;
  const int64_t picks = imin(p.k[set], n);

  for (int64_t j = warp; j < n; j += kWarps) {
    const T* r = row_of(base, stride, j);
    const float sq = warp_pair<T, false>(r, r, dim, lane);
    if (lane == 0) {
      st[j] = M == Metric::L2 ? sq : (sq > 0.0f ? 1.0f / sqrtf(sq) : 0.0f);
      mins[j] = INFINITY;
      done[j] = 0;
    }
  }
  __syncthreads();

  if (threadIdx.x == 0) pick_index = p.first[set], pick_value = INFINITY;
  __syncthreads();
  if (pick_index < 0) {  // the most isolated token
    float best = -INFINITY;
    int64_t best_i = -1;
    for (int64_t i = warp; i < n; i += kWarps) {
      const T* a = row_of(base, stride, i);
      float nearest = INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        if (j == i) continue;
        const float d = distance_of<M>(warp_pair<T, kL2>(a, row_of(base, stride, j), dim, lane), st[i], st[j]);
        nearest = fminf(nearest, d);
        if (d == -INFINITY) break;
      }
      keep_best(nearest, i, best, best_i);
    }
    block_best<kWarps>(best, best_i, s_value, s_index, &pick_value, &pick_index);
  }

  for (int64_t t = 0; t < picks; ++t) {
    const int64_t pick = pick_index;
    if (threadIdx.x == 0) {
      p.indices[set * p.max_k + t] = pick;
      if (p.distances) {
        const float v = pick_value;
        p.distances[set * p.max_k + t] = t == 0 ? INFINITY : (kL2 && v >= 0.0f ? sqrtf(v) : v);
      }
      done[pick] = 1;
    }
    __syncthreads();
    if (t + 1 == picks) break;
    const T* pivot = row_of(base, stride, pick);
    float best = -INFINITY;
    int64_t best_j = -1;
    for (int64_t j = warp; j < n; j += kWarps) {
      if (done[j]) continue;
      const float d = distance_of<M>(warp_pair<T, kL2>(pivot, row_of(base, stride, j), dim, lane), st[pick], st[j]);
      const float m = fminf(mins[j], d);
      if (lane == 0) mins[j] = m;
      keep_best(m, j, best, best_j);
    }
    block_best<kWarps>(best, best_j, s_value, s_index, &pick_value, &pick_index);
  }
}

template <typename T>
void run(const KcenterParams& p, const Launch& launch) {
  cudaStream_t stream = stream_of(launch);
  const int64_t tokens = p.tokens.host_offsets[p.tokens.count];
  const int64_t needed = workspace_bytes(p);
  TOKENSET_CHECK(needed == 0 || (launch.workspace != nullptr && launch.workspace_bytes >= needed), ValueError,
                 "kcenter: the CUDA workspace is missing or smaller than workspace_bytes()");
  WorkspaceCarver carve(launch.workspace);
  float* mins = carve.take<float>(tokens);
  float* stats = carve.take<float>(tokens);
  uint8_t* picked = carve.take<uint8_t>(tokens);
  const unsigned blocks = static_cast<unsigned>(p.tokens.count);
  switch (p.metric) {
    case Metric::L2: kcenter_kernel<T, Metric::L2><<<blocks, kWarps * 32, 0, stream>>>(p, mins, stats, picked); break;
    case Metric::InnerProduct:
      kcenter_kernel<T, Metric::InnerProduct><<<blocks, kWarps * 32, 0, stream>>>(p, mins, stats, picked);
      break;
    default: kcenter_kernel<T, Metric::Cosine><<<blocks, kWarps * 32, 0, stream>>>(p, mins, stats, picked); break;
  }
  TOKENSET_CHECK_LAUNCH("kcenter");
}

}  // namespace

void kcenter(const KcenterParams& p, const Launch& launch) {
  validate(p);
  const int64_t size = p.tokens.count * p.max_k;
  if (size == 0) return;
  TOKENSET_CHECK(p.tokens.count < (int64_t(1) << 31), ValueError, "kcenter: at most 2^31 - 1 sets per call on the GPU");
  fill_picks(p.indices, p.distances, size, stream_of(launch));
  TOKENSET_FLOAT_SWITCH(p.tokens.dtype(), kDType, [&] { run<cuda_type_t<kDType>>(p, launch); });
}

}  // namespace cuda
}  // namespace tokenset
