// Greedy maximum coverage on the CPU, the driver (compiled once): threads over sets, or, with fewer sets than threads,
// over each set's columns; per pick, the gains of every column are summed over the rows that can still gain (a row leaves the active list once its best reaches its
// maximum), then best is raised by the picked column for active rows only.
#include <algorithm>
#include <limits>

#include "coverage_kernels.h"
#include "parallel.h"
#include "topk.h"
#include "tokenset/coverage.h"

namespace tokenset {
namespace cpu {

void coverage(const CoverageParams& p, const Launch&) {
  validate(p);
  const int64_t b = p.matrix.shape[0], max_rows = p.matrix.shape[1], max_cols = p.matrix.shape[2], max_k = p.max_k;
  for (int64_t i = 0; i < b * max_k; ++i) p.indices[i] = -1;
  if (p.gains)
    for (int64_t i = 0; i < b * max_k; ++i) p.gains[i] = std::numeric_limits<float>::quiet_NaN();
  if (b == 0 || max_cols == 0) return;
  const CoverageKernel& kernel = TOKENSET_SIMD_KERNEL(coverage_kernel);
  const int threads = num_threads();
  // Fewer sets than threads: one set at a time, each pick's column gains split over the threads by column ranges.
  // Every column still sums its rows in row order, so the gains (and picks) do not depend on the thread count.
  const SetSplit split(b, threads);
  const int outer = split.slots, inner = split.per_set;
  AlignedBuffer<float> best(outer * max_rows), row_max(outer * max_rows), gains(outer * max_cols);
  AlignedBuffer<int64_t> active(outer * max_rows);
  AlignedBuffer<uint8_t> picked(outer * max_cols);
  AlignedBuffer<float> worker_value(outer * inner);
  AlignedBuffer<int64_t> worker_pick(outer * inner);
  const float* matrix = p.matrix.ptr<const float>();
  const int64_t set_stride = p.matrix.strides[0], row_stride = p.matrix.strides[1];
  auto run_set = [&](int64_t set, int slot) {
    float* bst = best.data() + slot * max_rows;
    float* top = row_max.data() + slot * max_rows;
    float* gain = gains.data() + slot * max_cols;
    int64_t* act = active.data() + slot * max_rows;
    uint8_t* done = picked.data() + slot * max_cols;
    float* wv = worker_value.data() + slot * inner;
    int64_t* wp = worker_pick.data() + slot * inner;
    const int64_t rows = p.host_rows[set], cols = p.host_cols[set];
    const int64_t picks = std::min(p.host_k[set], cols);
    const float* base = matrix + set * set_stride;
    int64_t live = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = base + r * row_stride;
      float m = 0.0f;  // best starts at 0: a row whose entries are all <= 0 (or NaN) never gains
      for (int64_t j = 0; j < cols; ++j)
        if (row[j] > m) m = row[j];
      bst[r] = 0.0f;
      top[r] = m;
      if (m > 0.0f) act[live++] = r;
    }
    for (int64_t j = 0; j < cols; ++j) done[j] = 0;
    // Gains of columns [c0, c1) and their best unpicked column (lowest index on ties; -1 if all are picked).
    auto column_gains = [&](int64_t c0, int64_t c1, float* value, int64_t* pick) {
      for (int64_t j = c0; j < c1; ++j) gain[j] = 0.0f;
      for (int64_t a = 0; a < live; ++a) kernel.add_row_gains(base + act[a] * row_stride + c0, bst[act[a]], c1 - c0,
                                                              gain + c0);
      *pick = -1;
      for (int64_t j = c0; j < c1; ++j) {
        if (done[j]) continue;
        if (*pick < 0 || gain[j] > *value) *value = gain[j], *pick = j;
      }
    };
    for (int64_t t = 0; t < picks; ++t) {
      int64_t pick = -1;
      float value = 0.0f;
      for (int w = 0; w < inner; ++w) wp[w] = -1;
      split.within(cols, std::max<int64_t>(64, cols / (2 * inner)), [&](int64_t c0, int64_t c1, int worker) {
        float v = 0.0f;
        int64_t j = -1;
        column_gains(c0, c1, &v, &j);
        keep_best(v, j, wv + worker, wp + worker);
      });
      for (int w = 0; w < inner; ++w) keep_best(wv[w], wp[w], &value, &pick);
      p.indices[set * max_k + t] = pick;
      if (p.gains) p.gains[set * max_k + t] = value;
      done[pick] = 1;
      int64_t kept = 0;
      for (int64_t a = 0; a < live; ++a) {
        const int64_t r = act[a];
        const float c = base[r * row_stride + pick];
        if (c > bst[r]) bst[r] = c;
        if (bst[r] < top[r]) act[kept++] = r;
      }
      live = kept;
    }
  };
  split.each_set(b, run_set);
}

}  // namespace cpu
}  // namespace tokenset
