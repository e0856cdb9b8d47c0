// Greedy maximum coverage on the CPU, the driver (compiled once): threads over sets; per pick, the gains of every
// column are summed over the rows that can still gain (a row leaves the active list once its best reaches its
// maximum), then best is raised by the picked column for active rows only.
#include <algorithm>
#include <limits>

#include "coverage_kernels.h"
#include "parallel.h"
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
  const int workers = static_cast<int>(std::min<int64_t>(num_threads(), b));
  AlignedBuffer<float> best(workers * max_rows), row_max(workers * max_rows), gains(workers * max_cols);
  AlignedBuffer<int64_t> active(workers * max_rows);
  AlignedBuffer<uint8_t> picked(workers * max_cols);
  const float* matrix = p.matrix.ptr<const float>();
  const int64_t set_stride = p.matrix.strides[0], row_stride = p.matrix.strides[1];
  parallel_for(b, 1, workers, [&](int64_t begin, int64_t end, int worker) {
    float* bst = best.data() + worker * max_rows;
    float* top = row_max.data() + worker * max_rows;
    float* gain = gains.data() + worker * max_cols;
    int64_t* act = active.data() + worker * max_rows;
    uint8_t* done = picked.data() + worker * max_cols;
    for (int64_t set = begin; set < end; ++set) {
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
      for (int64_t t = 0; t < picks; ++t) {
        for (int64_t j = 0; j < cols; ++j) gain[j] = 0.0f;
        for (int64_t a = 0; a < live; ++a) kernel.add_row_gains(base + act[a] * row_stride, bst[act[a]], cols, gain);
        int64_t pick = -1;
        float value = 0.0f;
        for (int64_t j = 0; j < cols; ++j) {
          if (done[j]) continue;
          if (pick < 0 || gain[j] > value) value = gain[j], pick = j;
        }
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
    }
  });
}

}  // namespace cpu
}  // namespace tokenset
