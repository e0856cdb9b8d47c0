// k-center on the CPU, the driver (compiled once): threads over sets when there are at least as many sets as
// threads, else one set at a time with its passes split across threads (a few large sets). Per pick, one pass over
// the set's rows updates every running minimum and finds the next pick (O(k n) distances); the most-isolated first
// pick is computed over pivot chunks against row blocks (O(n^2) distances, never an n x n matrix).
#include <algorithm>
#include <cmath>
#include <limits>

#include "kcenter_kernels.h"
#include "parallel.h"
#include "tokenset/kcenter.h"

namespace tokenset {
namespace cpu {
namespace {

constexpr int64_t kPivotChunkFloats = int64_t(1) << 20;  // packed pivots: 4 MiB per worker
constexpr int64_t kRowBlockFloats = int64_t(1) << 18;    // converted rows: 1 MiB per worker
constexpr float kInf = std::numeric_limits<float>::infinity();

// The better of two (value, index) candidates: larger value, then lower index; index -1 is no candidate.
inline void keep_best(float value, int64_t index, float* best_value, int64_t* best_index) {
  if (index < 0) return;
  if (*best_index < 0 || value > *best_value || (value == *best_value && index < *best_index)) {
    *best_value = value;
    *best_index = index;
  }
}

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
  const int threads = num_threads();
  const bool inside = count < threads;  // few sets: split each set's passes across threads
  const int outer = inside ? 1 : static_cast<int>(std::min<int64_t>(threads, count));
  const int inner = inside ? threads : 1;
  const int64_t chunk = std::clamp<int64_t>(kPivotChunkFloats / dim / kKcenterPivotAlign * kKcenterPivotAlign,
                                            kKcenterPivotAlign, 256);
  const int64_t block_rows = std::clamp<int64_t>(kRowBlockFloats / dim, 1, 64);
  const size_t max_length = static_cast<size_t>(sets.max_length);
  // Per set in flight (outer): running minima, row stats, picked flags, the pivot row and the per-worker bests.
  AlignedBuffer<float> min_distance(outer * max_length), stats(outer * max_length), pivots(outer * dim);
  AlignedBuffer<uint8_t> picked(outer * max_length);
  AlignedBuffer<float> best_value(outer * inner);
  AlignedBuffer<int64_t> best_index(outer * inner);
  // Per set in flight: every token's nearest-other distance as a pivot; per worker: packed pivot panels, a converted
  // row block, and every token's nearest-other distance as a row (merged after the pass).
  // Allocated only when some set asks for its most isolated token.
  bool isolate = false;
  for (int64_t i = 0; i < count; ++i) isolate = isolate || (p.host_first[i] < 0 && sets.length(i) > 0);
  const int workers = isolate ? outer * inner : 0;
  AlignedBuffer<float> packed(workers * chunk * dim), block(workers * block_rows * dim);
  AlignedBuffer<float> as_pivot(isolate ? outer * max_length : 0), as_row(workers * max_length);

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
    // Runs fn(begin, end, worker) over [0, items): across threads (inside) or on this worker alone.
    auto each = [&](int64_t items, int64_t grain, auto&& fn) {
      if (inside) {
        parallel_for(items, grain, inner, fn);
      } else {
        fn(0, items, 0);
      }
    };
    auto reset_bests = [&] {
      for (int w = 0; w < inner; ++w) bv[w] = -kInf, bi[w] = -1;
    };
    auto winner = [&](float* value) {
      float v = -kInf;
      int64_t i = -1;
      for (int w = 0; w < inner; ++w) keep_best(bv[w], bi[w], &v, &i);
      *value = v;
      return i;
    };
    each(n, std::max<int64_t>(64, n / (4 * inner)), [&](int64_t b, int64_t e, int) {
      kernel.row_stats(rows, p.metric, b, e, st + b);
    });
    int64_t pick = p.host_first[set];
    float value = kInf;
    if (pick < 0) {
      // Chunk c pairs its pivots with the rows from its own start on: each pair once (upper triangle), folded into
      // both tokens' nearest-other distances. Later chunks have fewer rows, so chunks are handed out one at a time.
      float* pivot_min = as_pivot.data() + slot * max_length;
      for (int w = 0; w < inner; ++w) {
        float* row_min = as_row.data() + (slot * inner + w) * max_length;
        for (int64_t j = 0; j < n; ++j) row_min[j] = kInf;
      }
      const int64_t chunks = (n + chunk - 1) / chunk;
      each(chunks, 1, [&](int64_t c0, int64_t c1, int worker) {
        const int w = slot * inner + worker;
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t i0 = c * chunk, i1 = std::min(n, i0 + chunk);
          kernel.nearest_other(rows, p.metric, st, i0, i1, block_rows, packed.data() + w * chunk * dim,
                               block.data() + w * block_rows * dim, pivot_min + i0,
                               as_row.data() + static_cast<int64_t>(w) * max_length);
        }
      });
      float best = -kInf;
      pick = -1;
      for (int64_t i = 0; i < n; ++i) {
        float nearest = pivot_min[i];
        for (int w = 0; w < inner; ++w) nearest = std::min(nearest, as_row[(slot * inner + w) * max_length + i]);
        if (pick < 0 || nearest > best) best = nearest, pick = i;
      }
      value = best;
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
      kernel.load_row(rows, pick, pivot);
      const float pivot_stat = st[pick];
      reset_bests();
      each(n, std::max<int64_t>(256, n / inner), [&](int64_t b, int64_t e, int worker) {
        float v;
        int64_t i;
        kernel.update(rows, p.metric, pivot, pivot_stat, st, b, e, mins, done, &v, &i);
        keep_best(v, i, bv + worker, bi + worker);
      });
      pick = winner(&value);
    }
  };

  if (inside) {
    for (int64_t set = 0; set < count; ++set) run_set(set, 0);
  } else {
    parallel_for(count, 1, outer, [&](int64_t b, int64_t e, int worker) {
      for (int64_t set = b; set < e; ++set) run_set(set, worker);
    });
  }
}

}  // namespace cpu
}  // namespace tokenset
