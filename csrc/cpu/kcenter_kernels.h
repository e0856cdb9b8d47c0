// The per-level k-center kernel table: defined by kcenter_kernels.cpp (once per SIMD level), picked by the driver
// kcenter.cpp. Distances follow csrc/cpu/distance.h: every level gives the same bits, so picks never depend on it.
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

// Where pair_block puts the distances of its pairs (i a pivot, j a row; +inf for i == j): into `matrix` (n x n,
// row-major) as matrix[j][i] when it is set (rows from the chunk's first pivot on: the lower triangle and the chunk's
// diagonal block), else folded into the nearest-other minima pivot_min[i - p0] and row_min[j].
struct PairSink {
  float* matrix = nullptr;
  float* pivot_min = nullptr;
  float* row_min = nullptr;
};

// Pivot chunks are multiples of this (every level's panel width divides it).
constexpr int64_t kKcenterPivotAlign = 32;
// pair_block's scratch in floats: the rows packed tile-major, then the tiles' running sums (tiles of at most 12 rows:
// 12 rows of headroom for the last tile).
inline int64_t pair_block_scratch_floats(int64_t dim, int64_t pivots, int64_t rows) {
  const int64_t lanes = (pivots + kKcenterPivotAlign - 1) / kKcenterPivotAlign * kKcenterPivotAlign;
  return (rows + 12) * dim + lanes * (rows + 12);
}

struct KcenterKernel {
  int panel_width;  // tokens per packed panel (divides kKcenterPivotAlign)
  // stats[j - begin] for rows [begin, end): 1 / ||x_j|| (cosine; 0 for a zero row), 0 (l2, ip).
  void (*row_stats)(const KcenterRows& rows, Metric metric, int64_t begin, int64_t end, float* stats);
  // Rows [begin, end) as float32 panels of panel_width tokens (panel c, element k, lane l), zero-padded:
  // ceil((end - begin) / panel_width) * panel_width * dim floats.
  void (*pack_panels)(const KcenterRows& rows, int64_t begin, int64_t end, float* packed);
  // The distances of pivots [p0, p1) (packed from p0 by pack_panels) and rows [q0, q1), into `sink`; `scratch`:
  // pair_block_scratch_floats(dim, p1 - p0, q1 - q0) floats.
  void (*pair_block)(const KcenterRows& rows, Metric metric, const float* stats, const float* packed, int64_t p0,
                     int64_t p1, int64_t q0, int64_t q1, float* scratch, const PairSink& sink);
  // One greedy step over rows [begin, end) (begin a multiple of panel_width; `packed`: their panels): the distance
  // from the float32 `pivot` (stat: pivot_stat) folded into min_distance[j] of the rows not yet picked; returns the
  // unpicked row with the largest running minimum (lowest index on ties; *best_index = -1 if all are picked).
  void (*update)(const float* packed, int64_t dim, Metric metric, const float* pivot, float pivot_stat,
                 const float* stats, int64_t begin, int64_t end, float* min_distance, const uint8_t* picked,
                 float* best_value, int64_t* best_index);
  // dst[k] = float(row j's element k).
  void (*load_row)(const KcenterRows& rows, int64_t j, float* dst);
};

TOKENSET_DECLARE_SIMD_KERNELS(KcenterKernel, kcenter_kernel)

}  // namespace cpu
}  // namespace tokenset
