// k-center on the CPU, the driver (compiled once): threads over sets when there are at least as many sets as
// threads, else one set at a time with its work split across threads (a few large sets).
//
// A set whose first pick is its most isolated token needs every pair's distance once. When the set's n x n distance
// matrix fits the budget of the workers on it (kMatrixBytesPerWorker each), the pairs are computed once into it, as
// GEMM tiles over the lower triangle then mirrored, and every greedy pick reads one row of it.
// Otherwise the most-isolated pass folds the same tiles into nearest-other minima, and each pick computes the
// pivot's distances to the set's rows again, from rows packed as panels (once per set when they fit the budget,
// else per block and pick). Both ways every distance has the same bits (distance.h), so the picks never depend on
// the path, the thread count or the SIMD level. Memory: per set in flight at most the budget, plus O(n) arrays and
// O(chunk x dim) scratch per worker, never n x n beyond the budget.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kcenter_kernels.h"
#include "parallel.h"
#include "topk.h"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cpu {
namespace {

constexpr int64_t kMatrixBytesPerWorker = int64_t(32) << 20;  // 2,896 tokens' distance matrix on one worker
constexpr int64_t kPivotChunkFloats = int64_t(1) << 20;       // packed pivots: 4 MiB per worker (1,024 of dim 1,024)
constexpr int64_t kRowBlockFloats = int64_t(1) << 18;         // a pair block's packed rows: 1 MiB per worker
constexpr int64_t kGreedyBlockFloats = int64_t(1) << 20;      // rows packed per pick when a set is over the budget
constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

void kcenter(const KcenterParams& p, const Launch&) {
  validate(p);
  const SetBatch& sets = p.tokens;
  const int64_t count = sets.count, dim = sets.dim(), max_k = p.max_k;
  for (int64_t i = 0; i < count * max_k; ++i) p.indices[i] = -1;
  if (p.distances)
    for (int64_t i = 0; i < count * max_k; ++i) p.distances[i] = std::numeric_limits<float>::quiet_NaN();
  if (count == 0 || sets.max_length == 0) return;
  const KcenterKernel& kernel = TOKENSET_SIMD_KERNEL(kcenter_kernel);
  const int64_t panel = kernel.panel_width;
  const int threads = num_threads();
  const SetSplit split(count, threads);  // few sets: each set's work split across threads
  const int outer = split.slots, inner = split.per_set;
  const int64_t budget_floats = inner * kMatrixBytesPerWorker / static_cast<int64_t>(sizeof(float));
  const int64_t chunk = std::clamp<int64_t>(kPivotChunkFloats / dim / kKcenterPivotAlign * kKcenterPivotAlign,
                                            kKcenterPivotAlign, 1024);
  const int64_t block_rows = std::clamp<int64_t>(kRowBlockFloats / dim, 1, 96);
  const int64_t greedy_rows =
      std::max<int64_t>(panel, kGreedyBlockFloats / dim / kKcenterPivotAlign * kKcenterPivotAlign);
  auto panels_floats = [&](int64_t n) { return (n + panel - 1) / panel * panel * dim; };
  // The distance matrix when it fits the budget and is worth it: always for the most isolated first pick (every pair
  // is needed anyway); with a given first pick when the greedy would repack the set per pick (its panels over the
  // budget) or would compute a quarter of the pairs or more anyway.
  auto uses_matrix = [&](int64_t n, bool most_isolated, int64_t picks) {
    if (n > budget_floats / n) return false;
    return most_isolated || panels_floats(n) > budget_floats || 4 * picks >= n;
  };

  // What each set takes: its distance matrix (most isolated first, n^2 within the budget), else its packed panels
  // (within the budget), else blocks packed per pick. The per-set-in-flight buffer holds the largest of these.
  int64_t resident_floats = 0;
  bool isolate = false, blocked = false;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = sets.length(i);
    if (n == 0) continue;
    const bool most_isolated = p.host_first[i] < 0;
    isolate = isolate || most_isolated || uses_matrix(n, most_isolated, std::min(p.host_k[i], n));
    if (uses_matrix(n, most_isolated, std::min(p.host_k[i], n))) {
      resident_floats = std::max(resident_floats, n * n);
    } else if (panels_floats(n) <= budget_floats) {
      resident_floats = std::max(resident_floats, panels_floats(n));
    } else {
      blocked = true;
    }
  }
  const size_t max_length = static_cast<size_t>(sets.max_length);
  // Per set in flight (outer): running minima, row stats, picked flags, the pivot row, the per-worker bests, and the
  // resident matrix or panels.
  AlignedBuffer<float> min_distance(outer * max_length), stats(outer * max_length), pivots(outer * dim);
  AlignedBuffer<uint8_t> picked(outer * max_length);
  AlignedBuffer<float> best_value(outer * inner);
  AlignedBuffer<int64_t> best_index(outer * inner);
  AlignedBuffer<float> resident(outer * resident_floats);
  // Per worker: packed pivots and a pair block's scratch (pairs), or greedy blocks packed per pick; per set in flight
  // and per worker, every token's nearest-other distance as a pivot and as a row (merged after the pass).
  const int workers = outer * inner;
  const int64_t pair_scratch = isolate ? pair_block_scratch_floats(dim, chunk, block_rows) : 0;
  AlignedBuffer<float> packed(isolate ? workers * chunk * dim : 0), scratch(workers * pair_scratch);
  AlignedBuffer<float> greedy_block(blocked ? workers * panels_floats(greedy_rows) : 0);
  AlignedBuffer<float> as_pivot(isolate ? outer * max_length : 0), as_row(isolate ? workers * max_length : 0);

  auto run_set = [&](int64_t set, int slot) {
    const int64_t n = sets.length(set);
    if (n == 0) return;
    const int64_t picks = std::min(p.host_k[set], n);
    const KcenterRows rows{sets.set_data(set), sets.set_stride(set), n, dim, sets.dtype()};
    float* mins = min_distance.data() + slot * max_length;
    float* st = stats.data() + slot * max_length;
    uint8_t* done = picked.data() + slot * max_length;
    float* pivot = pivots.data() + slot * dim;
    float* bv = best_value.data() + slot * inner;
    int64_t* bi = best_index.data() + slot * inner;
    float* own = resident.data() + slot * resident_floats;
    const bool most_isolated = p.host_first[set] < 0;
    float* matrix = uses_matrix(n, most_isolated, picks) ? own : nullptr;
    float* panels = !matrix && panels_floats(n) <= budget_floats ? own : nullptr;
    auto each = [&](int64_t items, int64_t grain, auto&& fn) { split.within(items, grain, fn); };
    each(n, std::max<int64_t>(64, n / (4 * inner)), [&](int64_t b, int64_t e, int) {
      kernel.row_stats(rows, p.metric, b, e, st + b);
    });

    int64_t pick = p.host_first[set];
    float value = kInf;
    if (most_isolated || matrix) {
      // Chunk c pairs its pivots with the rows from its own start on: each pair once (upper triangle). Later chunks
      // have fewer rows, so chunks are handed out one at a time.
      float* pivot_min = as_pivot.data() + slot * max_length;
      if (!matrix) {
        for (int w = 0; w < inner; ++w) std::fill_n(as_row.data() + (slot * inner + w) * max_length, n, kInf);
      }
      const int64_t chunks = (n + chunk - 1) / chunk;
      each(chunks, 1, [&](int64_t c0, int64_t c1, int worker) {
        const int w = slot * inner + worker;
        float* own_packed = packed.data() + w * chunk * dim;
        float* own_scratch = scratch.data() + w * pair_scratch;
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
          kernel.pack_panels(rows, i0, i1, own_packed);
          PairSink sink;
          sink.matrix = matrix;
          if (!matrix) {
            std::fill_n(pivot_min + i0, i1 - i0, kInf);
            sink.pivot_min = pivot_min + i0;
            sink.row_min = as_row.data() + static_cast<int64_t>(w) * max_length;
          }
          for (int64_t q0 = i0; q0 < n; q0 += block_rows)
            kernel.pair_block(rows, p.metric, st, own_packed, i0, i1, q0, std::min(n, q0 + block_rows), own_scratch,
                              sink);
        }
      });
      if (matrix) {
        // The tiles wrote the lower triangle (row j >= the pivot's chunk): mirror it, 32 x 32 blocks at a time, so
        // that every pick reads one contiguous row.
        const int64_t blocks = (n + 31) / 32;
        each(blocks, 1, [&](int64_t b0, int64_t b1, int) {
          float* const d = matrix;
          const int64_t size = n;
          for (int64_t b = b0; b < b1; ++b) {
            const int64_t i_end = std::min(size, b * 32 + 32);
            for (int64_t j0 = b * 32; j0 < size; j0 += 32) {
              const int64_t j_end = std::min(size, j0 + 32);
              for (int64_t i = b * 32; i < i_end; ++i) {
                float* out = d + i * size;
                for (int64_t j = std::max(j0, i + 1); j < j_end; ++j) out[j] = d[j * size + i];
              }
            }
          }
        });
      }
    }
    if (most_isolated) {
      // Every token's nearest other: a row minimum of the matrix (eight partial minima: the order of a minimum does
      // not change it), or the pivot and per-worker row minima.
      float* pivot_min = as_pivot.data() + slot * max_length;
      float* nearest = pivot_min;
      each(n, std::max<int64_t>(64, n / (4 * inner)), [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
          float m;
          if (matrix) {
            float part[8];
            for (float& v : part) v = kInf;
            const float* row = matrix + i * n;
            int64_t j = 0;
            for (; j + 8 <= n; j += 8)
              for (int u = 0; u < 8; ++u) part[u] = row[j + u] < part[u] ? row[j + u] : part[u];
            for (; j < n; ++j) part[0] = row[j] < part[0] ? row[j] : part[0];
            m = part[0];
            for (int u = 1; u < 8; ++u) m = part[u] < m ? part[u] : m;
          } else {
            m = pivot_min[i];
            for (int w = 0; w < inner; ++w) m = std::min(m, as_row[(slot * inner + w) * max_length + i]);
          }
          nearest[i] = m;
        }
      });
      float best = -kInf;
      pick = -1;
      for (int64_t i = 0; i < n; ++i)
        if (pick < 0 || nearest[i] > best) best = nearest[i], pick = i;
      value = best;
    }
    if (panels) {
      const int64_t count_panels = (n + panel - 1) / panel;
      each(count_panels, std::max<int64_t>(1, count_panels / (4 * inner)), [&](int64_t b, int64_t e, int) {
        kernel.pack_panels(rows, b * panel, std::min(n, e * panel), panels + b * panel * dim);
      });
    }

    for (int64_t j = 0; j < n; ++j) mins[j] = kInf, done[j] = 0;
    for (int64_t t = 0; t < picks; ++t) {
      p.indices[set * max_k + t] = pick;
      if (p.distances) {
        const float d = p.metric == Metric::L2 && value >= 0.0f ? std::sqrt(value) : value;
        p.distances[set * max_k + t] = t == 0 ? kInf : d;
      }
      done[pick] = 1;
      if (t + 1 == picks) break;
      if (matrix) {  // the pick's distances are a row of the matrix: O(n) per pick
        const float* row = matrix + pick * n;
        float best = -kInf;
        int64_t next = -1;
        for (int64_t j = 0; j < n; ++j) {
          if (done[j]) continue;
          float m = mins[j];
          if (row[j] < m) mins[j] = m = row[j];
          if (next < 0 || m > best) best = m, next = j;
        }
        pick = next, value = best;
        continue;
      }
      kernel.load_row(rows, pick, pivot);
      const float pivot_stat = st[pick];
      for (int w = 0; w < inner; ++w) bv[w] = -kInf, bi[w] = -1;
      const int64_t count_panels = (n + panel - 1) / panel;
      each(count_panels, std::max<int64_t>(1, count_panels / (4 * inner)), [&](int64_t b, int64_t e, int worker) {
        float v;
        int64_t i;
        const int64_t j0 = b * panel, j1 = std::min(n, e * panel);
        if (panels) {
          kernel.update(panels + j0 * dim, dim, p.metric, pivot, pivot_stat, st, j0, j1, mins, done, &v, &i);
          keep_best(v, i, bv + worker, bi + worker);
          return;
        }
        float* own_block = greedy_block.data() + (slot * inner + worker) * panels_floats(greedy_rows);
        for (int64_t g0 = j0; g0 < j1; g0 += greedy_rows) {
          const int64_t g1 = std::min(j1, g0 + greedy_rows);
          kernel.pack_panels(rows, g0, g1, own_block);
          kernel.update(own_block, dim, p.metric, pivot, pivot_stat, st, g0, g1, mins, done, &v, &i);
          keep_best(v, i, bv + worker, bi + worker);
        }
      });
      value = -kInf;
      pick = -1;
      for (int w = 0; w < inner; ++w) keep_best(bv[w], bi[w], &value, &pick);
    }
  };

  split.each_set(count, run_set);
}

}  // namespace cpu
}  // namespace tokenset
