// The per-level k-center kernel table: defined by kcenter_kernels.cpp (once per SIMD level), picked by the driver
// kcenter.cpp.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cpu {

// One set's rows as the kernels read them: `count` rows of `dim` elements, `stride` elements apart.
struct KcenterRows {
  const void* data = nullptr;
  int64_t stride = 0;
  int64_t count = 0;
  int64_t dim = 0;
  DType dtype = DType::Float32;
};

// Pivots scored together by nearest_other (a multiple of every level's panel width).
constexpr int64_t kKcenterPivotAlign = 32;

struct KcenterKernel {
  // stats[j - begin] for rows [begin, end): 1 / ||x_j|| (cosine; 0 for a zero row), ||x_j||^2 (l2), unused (ip).
  void (*row_stats)(const KcenterRows& rows, Metric metric, int64_t begin, int64_t end, float* stats);
  // Distances (squared for l2) from the float32 `pivot` (pivot_stat: its row stat) to rows [begin, end), folded into
  // min_distance[j] of the rows not yet picked; returns in *best_value / *best_index the unpicked row of the range
  // with the largest running minimum (lowest index on ties; *best_index = -1 if every row of the range is picked).
  void (*update)(const KcenterRows& rows, Metric metric, const float* pivot, float pivot_stat, const float* stats,
                 int64_t begin, int64_t end, float* min_distance, const uint8_t* picked, float* best_value,
                 int64_t* best_index);
  // The nearest-other distances (squared for l2) of pivots [p0, p1) against rows [p0, count), both ways at once
  // (the distance is symmetric, so the pairs below p0 were folded by earlier chunks): pivot_min[i - p0] = min over
  // those rows j != i; row_min[j] = min(row_min[j], min over the pivots i != j). Scratch: `packed` holds (p1 - p0
  // rounded up to kKcenterPivotAlign) * dim floats, `block` block_rows * dim floats.
  void (*nearest_other)(const KcenterRows& rows, Metric metric, const float* stats, int64_t p0, int64_t p1,
                        int64_t block_rows, float* packed, float* block, float* pivot_min, float* row_min);
  // dst[k] = float(row j's element k).
  void (*load_row)(const KcenterRows& rows, int64_t j, float* dst);
};

TOKENSET_DECLARE_SIMD_KERNELS(KcenterKernel, kcenter_kernel)

}  // namespace cpu
}  // namespace tokenset
