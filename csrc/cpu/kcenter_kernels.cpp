// k-center distance kernels, once per SIMD level (TOKENSET_SIMD_NS).
//
// update: one pivot against a range of rows, four rows per pass (the pivot's vector is loaded once for the four),
// float16 / bfloat16 rows converted in registers; the running minimum and the range's argmax in the same pass.
// nearest_other: the most-isolated first pick needs every token's nearest other token; pivots are packed as
// transposed float32 panels of QB tokens (as MaxSim's query panels) and rows stream through a register tile, so the
// n x n distances exist only a tile at a time. Everything here is `static` or in the level namespace.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kcenter_kernels.h"
#include "simd.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

#if defined(TOKENSET_SIMD_AVX512)
constexpr int QV = 2;
constexpr int R = 12;
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int QV = 2;
constexpr int R = 6;
#else
constexpr int QV = 8;
constexpr int R = 4;
#endif
constexpr int QB = QV * W;
static_assert(kKcenterPivotAlign % QB == 0, "pivot chunks must hold whole panels");

constexpr float kInf = std::numeric_limits<float>::infinity();

static inline const void* row_at(const KcenterRows& rows, int64_t j) {
  return static_cast<const char*>(rows.data) + j * rows.stride * dtype_size(rows.dtype);
}

static inline float lane_sum(V::type v) {
  float lanes[W];
  V::store(lanes, v);
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += lanes[i];
  return s;
}

// out[g] = <pivot, row g> (kL2: ||pivot - row g||^2) for G rows starting at row j0.
template <int G, DType D, bool kL2>
static inline void pivot_rows(const KcenterRows& rows, const float* pivot, int64_t j0, float* out) {
  const void* r[G];
  for (int g = 0; g < G; ++g) r[g] = row_at(rows, j0 + g);
  V::type acc[G];
  for (int g = 0; g < G; ++g) acc[g] = V::zero();
  const V::type minus_one = V::set1(-1.0f);
  int64_t k = 0;
  for (; k + W <= rows.dim; k += W) {
    const V::type p = V::load(pivot + k);
    for (int g = 0; g < G; ++g) {
      const V::type x = load_as_float<D>(r[g], k);
      if constexpr (kL2) {
        const V::type diff = V::fmadd(x, minus_one, p);
        acc[g] = V::fmadd(diff, diff, acc[g]);
      } else {
        acc[g] = V::fmadd(p, x, acc[g]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    float s = lane_sum(acc[g]);
    for (int64_t t = k; t < rows.dim; ++t) {
      const float x = element_to_float(r[g], t, D);
      if constexpr (kL2) {
        const float diff = pivot[t] - x;
        s = std::fma(diff, diff, s);
      } else {
        s = std::fma(pivot[t], x, s);
      }
    }
    out[g] = s;
  }
}

template <DType D, Metric M>
static void update_impl(const KcenterRows& rows, const float* pivot, float pivot_stat, const float* stats,
                        int64_t begin, int64_t end, float* min_distance, const uint8_t* picked, float* best_value,
                        int64_t* best_index) {
  constexpr bool kL2 = M == Metric::L2;
  float bv = -kInf;
  int64_t bi = -1;
  float d[4];
  for (int64_t j0 = begin; j0 < end; j0 += 4) {
    const int take = end - j0 < 4 ? static_cast<int>(end - j0) : 4;
    switch (take) {
      case 4: pivot_rows<4, D, kL2>(rows, pivot, j0, d); break;
      case 3: pivot_rows<3, D, kL2>(rows, pivot, j0, d); break;
      case 2: pivot_rows<2, D, kL2>(rows, pivot, j0, d); break;
      default: pivot_rows<1, D, kL2>(rows, pivot, j0, d); break;
    }
    for (int g = 0; g < take; ++g) {
      const int64_t j = j0 + g;
      if (picked[j]) continue;
      float dist = d[g];
      if constexpr (M == Metric::Cosine) dist = 1.0f - dist * (pivot_stat * stats[j]);
      if constexpr (M == Metric::InnerProduct) dist = -dist;
      if (dist != dist) dist = -kInf;
      float m = min_distance[j];
      if (dist < m) min_distance[j] = m = dist;
      if (bi < 0 || m > bv) bv = m, bi = j;
    }
  }
  *best_value = bv;
  *best_index = bi;
}

static void update(const KcenterRows& rows, Metric metric, const float* pivot, float pivot_stat, const float* stats,
                   int64_t begin, int64_t end, float* min_distance, const uint8_t* picked, float* best_value,
                   int64_t* best_index) {
  TOKENSET_FLOAT_SWITCH(rows.dtype, kDType, [&] {
    switch (metric) {
      case Metric::L2:
        return update_impl<kDType, Metric::L2>(rows, pivot, pivot_stat, stats, begin, end, min_distance, picked,
                                               best_value, best_index);
      case Metric::InnerProduct:
        return update_impl<kDType, Metric::InnerProduct>(rows, pivot, pivot_stat, stats, begin, end, min_distance,
                                                         picked, best_value, best_index);
      default:
        return update_impl<kDType, Metric::Cosine>(rows, pivot, pivot_stat, stats, begin, end, min_distance, picked,
                                                   best_value, best_index);
    }
  });
}

static void load_row(const KcenterRows& rows, int64_t j, float* dst) {
  const void* r = row_at(rows, j);
  if (rows.dtype == DType::Float32) {
    std::memcpy(dst, r, sizeof(float) * rows.dim);
  } else {
    convert_row(static_cast<const uint16_t*>(r), dst, rows.dim, rows.dtype);
  }
}

static void row_stats(const KcenterRows& rows, Metric metric, int64_t begin, int64_t end, float* stats) {
  if (metric == Metric::InnerProduct) return;
  for (int64_t j = begin; j < end; ++j) {
    float sq = 0.0f;
    const void* r = row_at(rows, j);
    for (int64_t k = 0; k < rows.dim; ++k) {
      const float x = element_to_float(r, k, rows.dtype);
      sq = std::fma(x, x, sq);
    }
    if (metric == Metric::L2) {
      stats[j - begin] = sq;
    } else {
      stats[j - begin] = sq > 0.0f ? 1.0f / std::sqrt(sq) : 0.0f;  // a zero vector has similarity 0 with all
    }
  }
}

// ---- nearest other token ---------------------------------------------------------------------------------------------
// acc[r][lane] = <panel lane, row r> for ROWS rows (rows[r * stride + k], float32), stored to tile[r * QB + lane].
template <int ROWS>
static inline void panel_tile(const float* panel, const float* rows, int64_t stride, int64_t dim, float* tile) {
  V::type acc[ROWS][QV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < QV; ++v) acc[r][v] = V::zero();
  for (int64_t k = 0; k < dim; ++k) {
    V::type p[QV];
    for (int v = 0; v < QV; ++v) p[v] = V::load(panel + k * QB + v * W);
    for (int r = 0; r < ROWS; ++r) {
      const V::type b = V::set1(rows[r * stride + k]);
      for (int v = 0; v < QV; ++v) acc[r][v] = V::fmadd(b, p[v], acc[r][v]);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < QV; ++v) V::store(tile + r * QB + v * W, acc[r][v]);
}

template <int ROWS>
static inline void panel_tile_any(int rows_left, const float* panel, const float* rows, int64_t stride, int64_t dim,
                                  float* tile) {
  if constexpr (ROWS >= 1) {
    if (rows_left == ROWS)
      panel_tile<ROWS>(panel, rows, stride, dim, tile);
    else
      panel_tile_any<ROWS - 1>(rows_left, panel, rows, stride, dim, tile);
  }
}

// ||a - b||^2 in float32, one FMA per element in k order; a is read `a_step` floats apart (a lane of a pivot panel).
static float direct_l2(const float* a, int64_t a_step, const float* b, int64_t dim) {
  float s = 0.0f;
  for (int64_t k = 0; k < dim; ++k) {
    const float diff = a[k * a_step] - b[k];
    s = std::fma(diff, diff, s);
  }
  return s;
}

static void nearest_other(const KcenterRows& rows, Metric metric, const float* stats, int64_t p0, int64_t p1,
                          int64_t block_rows, float* packed, float* block, float* out, float* row_min) {
  const int64_t dim = rows.dim, pivots = p1 - p0, panels = (pivots + QB - 1) / QB;
  // Pack: panel c, dimension k, lane l = pivot p0 + c * QB + l, unscaled: every pair's dot product is then summed in
  // the same order (over k, one FMA per element) whichever of the two is the pivot, and the distance below is
  // symmetric in (i, j) bit for bit, so mutual nearest neighbours tie exactly and the lower index wins.
  std::memset(packed, 0, sizeof(float) * panels * dim * QB);
  for (int64_t i = 0; i < pivots; ++i) {
    float* lane = packed + (i / QB) * dim * QB + (i % QB);
    const void* r = row_at(rows, p0 + i);
    for (int64_t k = 0; k < dim; ++k) lane[k * QB] = element_to_float(r, k, rows.dtype);
  }
  for (int64_t i = 0; i < pivots; ++i) out[i] = kInf;  // the nearest other token's distance (squared for l2)
  float tile[R * QB];
  for (int64_t b0 = p0; b0 < rows.count; b0 += block_rows) {  // rows below p0: folded by earlier chunks
    const int64_t here = rows.count - b0 < block_rows ? rows.count - b0 : block_rows;
    const float* source;
    int64_t stride;
    if (rows.dtype == DType::Float32 && (here == 1 || rows.stride >= dim)) {
      source = static_cast<const float*>(row_at(rows, b0));
      stride = rows.stride;
    } else {
      for (int64_t r = 0; r < here; ++r) load_row(rows, b0 + r, block + r * dim);
      source = block;
      stride = dim;
    }
    for (int64_t c = 0; c < panels; ++c) {
      const float* panel = packed + c * dim * QB;
      const int64_t lanes = pivots - c * QB < QB ? pivots - c * QB : QB;
      for (int64_t r0 = 0; r0 < here; r0 += R) {
        const int take = here - r0 < R ? static_cast<int>(here - r0) : R;
        panel_tile_any<R>(take, panel, source + r0 * stride, stride, dim, tile);
        for (int r = 0; r < take; ++r) {
          const int64_t j = b0 + r0 + r;
          float nearest_row = row_min[j];
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t i = c * QB + l;
            if (p0 + i == j) continue;
            const float dot = tile[r * QB + l];
            float d;
            if (metric == Metric::Cosine) {
              d = 1.0f - dot * (stats[p0 + i] * stats[j]);
            } else if (metric == Metric::L2) {
              d = (stats[p0 + i] + stats[j]) - 2.0f * dot;
              // |x|^2 + |y|^2 - 2<x, y> is NaN (inf - inf) or a spurious +-inf once a token holds +-inf or a square
              // overflows: such a pair is summed as ||x - y||^2 instead, as the greedy passes and the GPU do (+inf,
              // or NaN where inf - inf meet).
              if (!(std::fabs(d) < kInf)) d = direct_l2(panel + l, QB, source + (r0 + r) * stride, dim);
              d = d < 0.0f ? 0.0f : d;
            } else {
              d = -dot;
            }
            if (d != d) d = -kInf;  // a NaN distance counts as -inf
            if (d < out[i]) out[i] = d;
            if (d < nearest_row) nearest_row = d;
          }
          row_min[j] = nearest_row;
        }
      }
    }
  }
}

extern const KcenterKernel kcenter_kernel = {&row_stats, &update, &nearest_other, &load_row};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
