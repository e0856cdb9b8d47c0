// Attention scores on the GPU: correct, not tuned (no tensor cores, no tiling yet). Pass 1: a warp per (batch, head,
// needed row) computes the row's log-sum-exp (lanes take 32 keys at a time, a serial dot product each; online max and
// sum with the CPU's rules for -inf, +inf and NaN). Pass 2: a thread per output element recomputes its probabilities
// from the scores and the saved log-sum-exp, summing query heads in head order and (column mean) query rows in row
// order, so every element has one fixed summation order and no atomics.
#include <cmath>
#include <vector>

#include "attention_tokens.cuh"
#include "common.cuh"
#include "tokenset/attention_scores.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;

struct DeviceScores {
  DeviceTokens q, k;
  float* out = nullptr;
  float* lse = nullptr;             // lse_base[b] + h * needed(b) + row
  const int64_t* lse_base = nullptr;  // batch + 1
  const int64_t* rows = nullptr;    // [batch, rows_per_batch] or null (column mean)
  const int64_t* query_lengths = nullptr;
  const int64_t* key_lengths = nullptr;
  int64_t rows_per_batch = 0, batch = 0, heads = 0, out_heads = 0, group = 1, dim = 0, width = 0;
  int reduce = 0;
  bool causal = false;
  float scale = 1.0f;  // scale * log2(e): scores in log2 units

  __device__ int64_t query_length(int64_t b) const { return query_lengths ? query_lengths[b] : q.rows(b); }
  __device__ int64_t key_length(int64_t b) const { return key_lengths ? key_lengths[b] : k.rows(b); }
  __device__ int64_t needed(int64_t b) const { return rows ? rows_per_batch : query_length(b); }
  __device__ int64_t position(int64_t b, int64_t i) const { return rows ? rows[b * rows_per_batch + i] : i; }
  // The last key row `pos` sees.
  __device__ int64_t horizon(int64_t b, int64_t pos) const {
    const int64_t last = key_length(b) - 1;
    return causal ? imin(pos + key_length(b) - query_length(b), last) : last;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) lse_kernel(DeviceScores a, int64_t items) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* q_s = smem + warp * a.dim;
  for (int64_t item = blockIdx.x * kWarps + warp; item < items; item += static_cast<int64_t>(gridDim.x) * kWarps) {
    int64_t lo = 0, hi = a.batch;  // the sequence b with lse_base[b] <= item < lse_base[b + 1]
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (a.lse_base[mid] <= item) lo = mid; else hi = mid;
    }
    const int64_t b = lo, within = item - a.lse_base[b], h = within / a.needed(b), i = within % a.needed(b);
    const int64_t pos = a.position(b, i), last = a.horizon(b, pos);
    const T* q = static_cast<const T*>(a.q.data) + a.q.origin(b, h) + pos * a.q.row_stride();
    const T* k = static_cast<const T*>(a.k.data) + a.k.origin(b, h / a.group);
    for (int64_t c = lane; c < a.dim; c += 32) q_s[c] = to_float(q[c]) * a.scale;
    __syncwarp();
    float m = -INFINITY, l = 0.0f;
    bool nan = false;
    for (int64_t j0 = 0; j0 <= last; j0 += 32) {
      const int64_t j = j0 + lane;
      const float s = j <= last ? dot_row(q_s, k + j * a.k.row_stride(), a.dim) : -INFINITY;
      nan = nan || __any_sync(0xffffffffu, s != s);
      const float m_new = fmaxf(m, warp_max(s));
      const float m_safe = m_new == -INFINITY ? 0.0f : m_new;  // only -inf so far: keep a zero sum
      l = l * exp2f(m - m_safe) + warp_sum(exp2f(s - m_safe));
      m = m_new;
    }
    if (lane == 0) a.lse[item] = (nan || l != l) ? NAN : (l == 0.0f ? INFINITY : m + log2f(l));
    __syncwarp();
  }
}

template <typename T>
__global__ void output_kernel(DeviceScores a, int64_t elements) {
  const int64_t out_rows = a.rows ? a.rows_per_batch : 1;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < elements;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % a.width, r = (e / a.width) % out_rows, oh = (e / (a.width * out_rows)) % a.out_heads;
    const int64_t b = e / (a.width * out_rows * a.out_heads);
    float total = 0.0f;
    const int64_t queries = a.query_length(b);
    if (j < a.key_length(b)) {
      const int64_t h0 = a.reduce == 0 ? oh : 0, h1 = a.reduce == 0 ? oh + 1 : a.heads;
      for (int64_t h = h0; h < h1; ++h) {
        const T* k = static_cast<const T*>(a.k.data) + a.k.origin(b, h / a.group) + j * a.k.row_stride();
        const T* q = static_cast<const T*>(a.q.data) + a.q.origin(b, h);
        const float* lse = a.lse + a.lse_base[b] + h * a.needed(b);
        const int64_t i0 = a.rows ? r : 0, i1 = a.rows ? r + 1 : queries;
        float head_total = 0.0f;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t pos = a.position(b, i);
          if (j > a.horizon(b, pos)) continue;
          const T* qrow = q + pos * a.q.row_stride();
          float s = 0.0f;
          for (int64_t c = 0; c < a.dim; ++c) s = fmaf(to_float(qrow[c]) * a.scale, to_float(k[c]), s);
          head_total += exp2f(s - lse[i]);
        }
        total += head_total;
      }
      float divisor = a.reduce == 2 ? static_cast<float>(a.heads) : 1.0f;
      if (!a.rows) divisor *= static_cast<float>(queries);
      total = divisor > 0.0f ? total * (1.0f / divisor) : 0.0f;
    }
    a.out[e] = total;
  }
}

}  // namespace

void attention_scores(const AttentionScoresParams& p, const Launch& launch) {
  validate(p);
  if (p.out.numel() == 0) return;
  const cudaStream_t stream = stream_of(launch);
  WorkspaceCarver carve(launch.workspace);
  std::vector<int64_t> base(static_cast<size_t>(p.batch) + 1, 0);
  for (int64_t b = 0; b < p.batch; ++b)
    base[b + 1] = base[b] + p.heads() * (p.column_mean() ? p.query_length(b) : p.rows_per_batch);
  float* lse = carve.take<float>(base.back());
  int64_t* lse_base = carve.take<int64_t>(p.batch + 1);
  // Pageable source: the copy has left `base` when the call returns.
  TOKENSET_CUDA_CHECK(cudaMemcpyAsync(lse_base, base.data(), base.size() * sizeof(int64_t), cudaMemcpyHostToDevice,
                                      stream));
  DeviceScores a;
  a.q = device_tokens(p.q, p.device_cu_seqlens_q);
  a.k = device_tokens(p.k, p.device_cu_seqlens_k);
  a.out = p.out.ptr<float>();
  a.lse = lse;
  a.lse_base = lse_base;
  a.rows = p.column_mean() ? nullptr : p.device_rows;
  a.query_lengths = p.query_lengths ? p.device_query_lengths : nullptr;
  a.key_lengths = p.key_lengths ? p.device_key_lengths : nullptr;
  a.rows_per_batch = p.rows_per_batch;
  a.batch = p.batch;
  a.heads = p.heads();
  a.out_heads = p.out_heads();
  a.group = p.heads() / p.kv_heads();
  a.dim = p.dim();
  a.width = p.width();
  a.reduce = static_cast<int>(p.reduce);
  a.causal = p.causal;
  a.scale = p.scale * kLog2e;
  const int64_t items = base.back(), elements = p.out.numel();
  TOKENSET_FLOAT_SWITCH(p.q.values.dtype, kDType, [&] {
    using T = cuda_type_t<kDType>;
    if (items > 0) {
      const size_t shared = static_cast<size_t>(kWarps) * p.dim() * sizeof(float);
      lse_kernel<T><<<grid_for(items, kWarps), kThreads, shared, stream>>>(a, items);
      TOKENSET_CHECK_LAUNCH("attention_scores (log-sum-exp)");
    }
    output_kernel<T><<<grid_for(elements, 256), 256, 0, stream>>>(a, elements);
    TOKENSET_CHECK_LAUNCH("attention_scores");
  });
}

}  // namespace cuda
}  // namespace tokenset
