// Nearest-target kernels, once per SIMD level (TOKENSET_SIMD_NS): a chunk of query tokens packed as panels against
// the target set's rows packed tile-major in blocks, through distance.h's GEMM tiles (panel_block_sums), with the
// argmin fused into the epilogue: no [queries, targets] matrix beyond one block of running sums.
#include <cstdint>
#include <limits>

#include "distance.h"
#include "nearest_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

constexpr int QV = kPanelVectors;
constexpr int QB = kPanelWidth;
static_assert(kNearestQueryAlign % QB == 0, "query chunks must hold whole panels");
static_assert(kTileRowsDot <= 12 && kTileRowsL2 <= 12, "nearest_scratch_floats leaves 12 rows of headroom");
constexpr float kInf = std::numeric_limits<float>::infinity();

template <Metric M>
static void nearest_impl(const KcenterRows& queries, int64_t q0, int64_t q1, const KcenterRows& targets,
                         float* scratch, int64_t* index, float* distance) {
  constexpr int RT = tile_rows<M>();
  const int64_t dim = queries.dim, count = q1 - q0, panels = (count + QB - 1) / QB, lanes = panels * QB;
  const int64_t n = targets.count;
  const int64_t block_rows = kNearestTargetBlock + 12;
  const char* qbase =
      static_cast<const char*>(queries.data) + q0 * queries.stride * static_cast<int64_t>(dtype_size(queries.dtype));
  const int64_t tsize = static_cast<int64_t>(dtype_size(targets.dtype));
  float* packed = scratch;                     // the queries' panels
  float* query_stats = packed + lanes * dim;   // lanes floats (0 past count)
  float* block = query_stats + lanes;          // a target block, tile-major
  float* target_stats = block + block_rows * dim;
  float* sums = target_stats + block_rows;     // panel c, tile t: RT x QB running sums
  float* best = sums + lanes * block_rows;     // per query: the least distance so far
  pack_panels(qbase, queries.stride, queries.dtype, dim, 0, count, packed);
  for (int64_t l = 0; l < lanes; ++l) query_stats[l] = 0.0f, best[l] = kInf;
  row_stats_of(M, qbase, queries.stride, queries.dtype, dim, count, query_stats);
  for (int64_t q = 0; q < count; ++q) index[q] = -1;  // -1 until a distance below +inf
  float d[QB];
  for (int64_t b0 = 0; b0 < n; b0 += kNearestTargetBlock) {
    const int64_t here = n - b0 < kNearestTargetBlock ? n - b0 : kNearestTargetBlock, tiles = (here + RT - 1) / RT;
    const void* tbase = static_cast<const char*>(targets.data) + b0 * targets.stride * tsize;
    pack_tiles<RT>(tbase, targets.stride, targets.dtype, dim, 0, here, block);
    row_stats_of(M, tbase, targets.stride, targets.dtype, dim, here, target_stats);
    panel_block_sums<M>(packed, panels, dim, block, here, [](int64_t) { return int64_t(0); }, sums);
    for (int64_t c = 0; c < panels; ++c) {
      const int64_t valid = count - c * QB < QB ? count - c * QB : QB;
      for (int64_t r = 0; r < here; ++r) {
        const float* tile = sums + (c * tiles + r / RT) * RT * QB + (r % RT) * QB;
        for (int v = 0; v < QV; ++v)
          V::store(d + v * W, finish_vector<M>(V::load(tile + v * W), V::load(query_stats + c * QB + v * W),
                                               target_stats[r], kInf));
        float* lane_best = best + c * QB;
        int64_t* lane_index = index + c * QB;
        for (int64_t l = 0; l < valid; ++l)
          if (d[l] < lane_best[l]) lane_best[l] = d[l], lane_index[l] = b0 + r;  // strictly: the lowest index keeps a tie
      }
    }
  }
  for (int64_t q = 0; q < count; ++q) {
    if (index[q] < 0 && n > 0) index[q] = 0;  // every distance +inf (or NaN): the lowest index
    if (distance) distance[q] = best[q];
  }
}

static void nearest_chunk(const KcenterRows& queries, int64_t q0, int64_t q1, const KcenterRows& targets,
                          Metric metric, float* scratch, int64_t* index, float* distance) {
  switch (metric) {
    case Metric::L2: return nearest_impl<Metric::L2>(queries, q0, q1, targets, scratch, index, distance);
    case Metric::InnerProduct:
      return nearest_impl<Metric::InnerProduct>(queries, q0, q1, targets, scratch, index, distance);
    default: return nearest_impl<Metric::Cosine>(queries, q0, q1, targets, scratch, index, distance);
  }
}

extern const NearestKernel nearest_kernel = {&nearest_chunk};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
