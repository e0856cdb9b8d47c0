// The per-level nearest-target kernel table: defined by nearest_kernels.cpp (once per SIMD level), picked by the
// driver nearest.cpp. Distances follow csrc/cpu/distance.h: the same bits on every level.
#pragma once

#include <cstdint>

#include "kcenter_kernels.h"
#include "tokenset/cpu_runtime.h"
#include "tokenset/nearest.h"

namespace tokenset {
namespace cpu {

// Query tokens per work item (a multiple of every level's panel width) and target rows per packed block.
constexpr int64_t kNearestQueryAlign = 32;
constexpr int64_t kNearestTargetBlock = 96;

// Scratch floats of one nearest_chunk call for `queries` query tokens of dimension `dim`: their packed panels and
// stats, a packed target block with its stats, the block's running sums, and the queries' best distances.
inline int64_t nearest_scratch_floats(int64_t dim, int64_t queries) {
  const int64_t lanes = (queries + kNearestQueryAlign - 1) / kNearestQueryAlign * kNearestQueryAlign;
  const int64_t block = kNearestTargetBlock + 12;
  return lanes * dim + lanes + block * dim + block + lanes * block + lanes;
}

struct NearestKernel {
  // For query rows [q0, q1) of `queries` (one set): the nearest of the `targets` rows (one set), into index[q - q0]
  // and distance[q - q0] (distance may be null). scratch: nearest_scratch_floats(dim, q1 - q0) floats.
  void (*nearest_chunk)(const KcenterRows& queries, int64_t q0, int64_t q1, const KcenterRows& targets, Metric metric,
                        float* scratch, int64_t* index, float* distance);
};

TOKENSET_DECLARE_SIMD_KERNELS(NearestKernel, nearest_kernel)

}  // namespace cpu
}  // namespace tokenset
