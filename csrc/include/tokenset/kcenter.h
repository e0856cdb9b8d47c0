// k-center (max-min diversity, farthest-first traversal): for every set, k tokens picked greedily, each the token whose
// distance to its nearest earlier pick is largest (DivPrune, ToDRE; Gonzalez's 2-approximation of k-center).
//
// Semantics (the same on both devices; the numpy reference is tokenset/reference/kcenter.py):
//   distance  cosine: 1 - <x, y> r_x r_y with r = 1 / ||x|| (r = 0 for a zero vector: its similarity is 0)
//             l2:     ||x - y|| (compared squared)        ip: -<x, y>
//             in float32 whatever the dtype, every pair summed in k order with one FMA per element (l2 over the
//             differences), the same bits on every SIMD level and on CUDA (csrc/cpu/distance.h); a NaN distance
//             counts as -inf (a token with NaN is picked after every finite one). A token holding +-inf is at +inf
//             from every finite token under l2 (the most isolated token, and the next pick after a finite one) and
//             at NaN, i.e. -inf, from a token with the same infinity in the same coordinate.
//   first     first[i] >= 0: that token; first[i] == -1: the most isolated token (largest distance to its nearest
//             other token; DivPrune's first pick), computed tile by tile; the CPU keeps the n x n matrix only when
//             it fits 32 MiB per worker on the set.
//   picks     min(k[i], n_i) distinct tokens in pick order, ties to the lowest index; the rest of the row is -1.
//   distances (optional) the picked token's distance to its nearest earlier pick at the time it was picked (+inf for
//             the first): the covering radius so far, non-increasing.
#pragma once

#include "tokenset/common.h"

namespace tokenset {

enum class Metric : int32_t { Cosine = 0, L2 = 1, InnerProduct = 2 };

inline const char* metric_name(Metric m) {
  switch (m) {
    case Metric::Cosine: return "cosine";
    case Metric::L2: return "l2";
    case Metric::InnerProduct: return "ip";
  }
  return "unknown";
}

struct KcenterParams {
  SetBatch tokens;
  Metric metric = Metric::Cosine;
  // Per-set arrays: host_* is what validate() checks, a copy owned by the call (the binding's); the kernel's pointer is
  // that same copy on the CPU and, on CUDA, the device copy Python made from the same immutable host array.
  const int64_t* k = nullptr;           // [count] picks per set (device memory on CUDA)
  const int64_t* host_k = nullptr;      // the same on the host: what validate() checks
  const int64_t* first = nullptr;       // [count] first pick per set, -1 = most isolated (device memory on CUDA)
  const int64_t* host_first = nullptr;
  int64_t max_k = 0;                    // columns of the outputs
  int64_t* indices = nullptr;           // [count, max_k]
  float* distances = nullptr;           // [count, max_k] or null
};

// Checks everything the kernels follow, the batch included (offsets, max_length, every set inside the values).
inline void validate(const KcenterParams& p) {
  check_filled_set_batch(p.tokens, "tokens");
  const int m = static_cast<int>(p.metric);
  TOKENSET_CHECK(m >= 0 && m <= 2, ValueError, "metric must be cosine, l2 or ip (0, 1, 2), got ", m);
  TOKENSET_CHECK(p.max_k >= 0, ValueError, "max_k must be >= 0, got ", p.max_k);
  if (p.tokens.count == 0) return;
  TOKENSET_CHECK(p.host_k && p.k && p.host_first && p.first, ValueError, "kcenter: k and first arrays missing");
  TOKENSET_CHECK(p.max_k == 0 || p.indices, ValueError, "kcenter: indices output missing");
  for (int64_t i = 0; i < p.tokens.count; ++i) {
    TOKENSET_CHECK(p.host_k[i] >= 1 && p.host_k[i] <= p.max_k, ValueError, "k[", i, "] must be in 1..", p.max_k,
                   ", got ", p.host_k[i]);
    const int64_t n = p.tokens.host_offsets[i + 1] - p.tokens.host_offsets[i];
    TOKENSET_CHECK(p.host_first[i] == -1 || (p.host_first[i] >= 0 && p.host_first[i] < n), ValueError, "first[", i, "]=", p.host_first[i], " is not a token of set ", i, ", which has ", n,
                   " tokens (use -1 for the most isolated token)");
  }
}

// GPU tiling, shared by workspace_bytes() and cuda/kcenter.cu: a greedy pass gives every set that makes at least two
// picks ceil(n / kKcenterGpuRows) row blocks, each with one (best value, index) slot in the workspace.
constexpr int64_t kKcenterGpuRows = 128;

TOKENSET_HOST_DEVICE inline int64_t kcenter_greedy_blocks_of_set(int64_t n, int64_t k) {
  return (k < n ? k : n) >= 2 ? (n + kKcenterGpuRows - 1) / kKcenterGpuRows : 0;
}

inline int64_t kcenter_greedy_blocks(const KcenterParams& p) {
  int64_t blocks = 0;
  if (p.tokens.count <= 0 || !p.tokens.host_offsets || !p.host_k) return 0;
  for (int64_t i = 0; i < p.tokens.count; ++i)
    blocks += kcenter_greedy_blocks_of_set(p.tokens.host_offsets[i + 1] - p.tokens.host_offsets[i], p.host_k[i]);
  return blocks;
}

// GPU: per token of the batch its row stat, running minimum, nearest-other distance (ordered bits) and picked flag
// (13 bytes: 13/(4 dim) of the float32 input); per set two block starts and its current pivot (24 bytes); per greedy
// row block a (value, index) slot (12 bytes per 128 tokens). O(tokens + sets), never n x n.
inline int64_t workspace_bytes(const KcenterParams& p) {
  const int64_t count = p.tokens.count > 0 ? p.tokens.count : 0;
  const int64_t tokens = count > 0 ? p.tokens.host_offsets[count] : 0;
  const int64_t blocks = kcenter_greedy_blocks(p);
  WorkspaceCarver carve;
  carve.take<float>(tokens);         // row stats (cosine: 1 / ||x||)
  carve.take<float>(tokens);         // running minimum distance to the picks
  carve.take<uint32_t>(tokens);      // nearest other token (most-isolated pass), order-preserving float bits
  carve.take<uint8_t>(tokens);       // picked flags
  carve.take<int64_t>(count + 1);    // first greedy row block of every set
  carve.take<int64_t>(count + 1);    // first most-isolated tile pair of every set
  carve.take<int64_t>(count);        // every set's latest pick
  carve.take<float>(blocks);         // per greedy row block: best running minimum
  carve.take<int64_t>(blocks);       // and its token
  return carve.used();
}

namespace cpu {
void kcenter(const KcenterParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// Tiled over several blocks per set: the most-isolated pass over (set, tile, tile) pairs of the upper triangle, each
// pick as a (set, row block) pass and a per-set reduction; distances summed per pair in k order, as the CPU.
void kcenter(const KcenterParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
