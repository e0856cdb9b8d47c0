// k-center distance kernels, once per SIMD level (TOKENSET_SIMD_NS). Distances are distance.h's: one pair per vector
// lane, summed in k order, so every level gives the same bits.
//
// pair_block: a chunk of pivots packed as transposed panels against a block of rows packed tile-major, as a
// register-blocked GEMM: tiles of R rows x one panel, k split into blocks that keep the panel slice in L1 (the tiles'
// partial sums are stored and reloaded between blocks, which keeps every sum's order). The distances land in the
// set's distance matrix or fold into nearest-other minima.
// update: one greedy step, the pivot broadcast against packed row panels (one row per lane), four panels per pass.
// Everything here is `static` or in the level namespace.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "distance.h"
#include "kcenter_kernels.h"
#include "simd.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

constexpr int QV = kPanelVectors;
constexpr int QB = kPanelWidth;
static_assert(kKcenterPivotAlign % QB == 0, "pivot chunks must hold whole panels");
static_assert(kTileRowsDot <= 12 && kTileRowsL2 <= 12, "pair_block_scratch_floats leaves 12 rows of headroom");
constexpr float kInf = std::numeric_limits<float>::infinity();

static inline const void* row_at(const KcenterRows& rows, int64_t j) {
  return static_cast<const char*>(rows.data) + j * rows.stride * dtype_size(rows.dtype);
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
  row_stats_of(metric, row_at(rows, begin), rows.stride, rows.dtype, rows.dim, end - begin, stats);
}

static void pack(const KcenterRows& rows, int64_t begin, int64_t end, float* packed) {
  pack_panels(rows.data, rows.stride, rows.dtype, rows.dim, begin, end, packed);
}

// ---- pivots x rows ---------------------------------------------------------------------------------------------------
template <Metric M>
static void pair_block_impl(const KcenterRows& rows, const float* stats, const float* packed, int64_t p0, int64_t p1,
                            int64_t q0, int64_t q1, float* scratch, const PairSink& sink) {
  constexpr int RT = tile_rows<M>();
  const int64_t dim = rows.dim, pivots = p1 - p0, panels = (pivots + QB - 1) / QB, here = q1 - q0;
  const int64_t tiles = (here + RT - 1) / RT;
  float* block = scratch;                   // the rows, tile-major
  float* sums = scratch + tiles * RT * dim;  // panel c, tile t: RT x QB running sums
  pack_tiles<RT>(rows.data, rows.stride, rows.dtype, dim, q0, q1, block);
  // Panel c needs only the rows from its own first pivot on (each pair once, the 32 x 32 diagonal blocks twice):
  // tiles wholly above it are skipped, here and in the epilogue.
  auto first_tile = [&](int64_t c) {
    const int64_t i0 = p0 + c * QB;
    return i0 > q0 ? (i0 - q0) / RT : 0;
  };
  panel_block_sums<M>(packed, panels, dim, block, here, first_tile, sums);
  // Distances a vector of lanes at a time (finish_vector: finish_distance's operations, so the same bits).
  const int64_t n = rows.count;
  float lane_stats[QB], d[QB];
  for (int64_t c = 0; c < panels; ++c) {
    const int64_t i0 = p0 + c * QB, lanes = pivots - c * QB < QB ? pivots - c * QB : QB;
    for (int64_t l = 0; l < QB; ++l) lane_stats[l] = l < lanes ? stats[i0 + l] : 0.0f;
    for (int64_t r = first_tile(c) * RT; r < here; ++r) {
      const int64_t j = q0 + r;
      const float* tile = sums + (c * tiles + r / RT) * RT * QB + (r % RT) * QB;
      for (int v = 0; v < QV; ++v)
        V::store(d + v * W, finish_vector<M>(V::load(tile + v * W), V::load(lane_stats + v * W), stats[j]));
      if (j >= i0 && j < i0 + lanes) d[j - i0] = kInf;  // a token is not its own neighbour
      if (sink.matrix) {
        float* out = sink.matrix + j * n + i0;  // row j, the pivots' columns
        for (int64_t l = 0; l < lanes; ++l) out[l] = d[l];
      } else {
        float nearest_row = sink.row_min[j];
        float* nearest_pivot = sink.pivot_min + (i0 - p0);
        for (int64_t l = 0; l < lanes; ++l) {
          nearest_pivot[l] = d[l] < nearest_pivot[l] ? d[l] : nearest_pivot[l];
          nearest_row = d[l] < nearest_row ? d[l] : nearest_row;
        }
        sink.row_min[j] = nearest_row;
      }
    }
  }
}

static void pair_block(const KcenterRows& rows, Metric metric, const float* stats, const float* packed, int64_t p0,
                       int64_t p1, int64_t q0, int64_t q1, float* scratch, const PairSink& sink) {
  switch (metric) {
    case Metric::L2: return pair_block_impl<Metric::L2>(rows, stats, packed, p0, p1, q0, q1, scratch, sink);
    case Metric::InnerProduct:
      return pair_block_impl<Metric::InnerProduct>(rows, stats, packed, p0, p1, q0, q1, scratch, sink);
    default: return pair_block_impl<Metric::Cosine>(rows, stats, packed, p0, p1, q0, q1, scratch, sink);
  }
}

// ---- one greedy step -------------------------------------------------------------------------------------------------
// sums[g * QB + lane] for G panels from `panels`: the pivot (broadcast) against each panel's rows.
template <int G, Metric M>
static inline void pivot_panels(const float* panels, int64_t dim, const float* pivot, float* sums) {
  V::type acc[G][QV];
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < QV; ++v) acc[g][v] = V::zero();
  for (int64_t k = 0; k < dim; ++k) {
    const V::type b = V::set1(pivot[k]);
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < QV; ++v)
        acc[g][v] = accumulate_pair<M>(acc[g][v], V::load(panels + g * dim * QB + k * QB + v * W), b);
  }
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < QV; ++v) V::store(sums + g * QB + v * W, acc[g][v]);
}

template <Metric M>
static void update_impl(const float* packed, int64_t dim, const float* pivot, float pivot_stat, const float* stats,
                        int64_t begin, int64_t end, float* min_distance, const uint8_t* picked, float* best_value,
                        int64_t* best_index) {
  constexpr int G = 4;
  float bv = -kInf;
  int64_t bi = -1;
  float sums[G * QB];
  for (int64_t j0 = begin; j0 < end; j0 += G * QB) {
    const int64_t left = (end - j0 + QB - 1) / QB;
    const float* panels = packed + (j0 - begin) * dim;
    switch (left < G ? left : G) {
      case 4: pivot_panels<4, M>(panels, dim, pivot, sums); break;
      case 3: pivot_panels<3, M>(panels, dim, pivot, sums); break;
      case 2: pivot_panels<2, M>(panels, dim, pivot, sums); break;
      default: pivot_panels<1, M>(panels, dim, pivot, sums); break;
    }
    const int64_t stop = end - j0 < G * QB ? end - j0 : G * QB;
    for (int64_t o = 0; o < stop; ++o) {
      const int64_t j = j0 + o;
      if (picked[j]) continue;
      const float d = finish_distance(M, sums[o], pivot_stat, stats[j]);
      float m = min_distance[j];
      if (d < m) min_distance[j] = m = d;
      if (bi < 0 || m > bv) bv = m, bi = j;
    }
  }
  *best_value = bv;
  *best_index = bi;
}

static void update(const float* packed, int64_t dim, Metric metric, const float* pivot, float pivot_stat,
                   const float* stats, int64_t begin, int64_t end, float* min_distance, const uint8_t* picked,
                   float* best_value, int64_t* best_index) {
  switch (metric) {
    case Metric::L2:
      return update_impl<Metric::L2>(packed, dim, pivot, pivot_stat, stats, begin, end, min_distance, picked,
                                     best_value, best_index);
    case Metric::InnerProduct:
      return update_impl<Metric::InnerProduct>(packed, dim, pivot, pivot_stat, stats, begin, end, min_distance,
                                               picked, best_value, best_index);
    default:
      return update_impl<Metric::Cosine>(packed, dim, pivot, pivot_stat, stats, begin, end, min_distance, picked,
                                         best_value, best_index);
  }
}

extern const KcenterKernel kcenter_kernel = {QB, &row_stats, &pack, &pair_block, &update, &load_row};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
