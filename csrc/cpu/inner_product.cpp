// Inner-product top-k on the CPU, the driver (compiled once): threads over stored rows, each worker keeps a heap per
// query of the group; a worker takes 16 eligible rows at a time (read in place) and scores them against the group's
// queries 4 at a time in register tiles (rows re-read from cache for each 4 queries).
#include <algorithm>
#include <cmath>
#include <limits>

#include "inner_product_kernels.h"
#include "parallel.h"
#include "tokenset/inner_product.h"
#include "topk.h"

namespace tokenset {
namespace cpu {

// Heaps of a query group take at most this many bytes (or one query's, when k alone needs more).
constexpr int64_t kInnerProductHeapBudget = int64_t(64) << 20;

void inner_product_topk(const InnerProductParams& p, const Launch&) {
  validate(p);
  for (int64_t i = 0; p.scales && i < p.vectors.shape[0]; ++i)  // n floats beside n rows of the scan: cheap
    TOKENSET_CHECK(std::isfinite(p.scales[i]) && p.scales[i] >= 0.0f, ValueError, "scales[", i, "] = ", p.scales[i],
                   " is not a finite number >= 0 (scales come from tokenset.quantize)");
  const int64_t nq = p.queries.shape[0], n = p.vectors.shape[0], dim = p.queries.shape[1], k = p.k;
  const int64_t kept = start_topk(p.top_scores, p.top_indices, nq, k, n);
  if (nq == 0 || kept == 0) return;
  const InnerProductKernel& kernel = TOKENSET_SIMD_KERNEL(inner_product_kernel);
  const int threads = num_threads();
  const int64_t per_query = static_cast<int64_t>(threads) * kept * static_cast<int64_t>(sizeof(TopkEntry) + 8);
  const int64_t group = std::max<int64_t>(1, std::min(nq, kInnerProductHeapBudget / per_query));
  const float* queries = p.queries.ptr<const float>();
  const int64_t query_stride = nq > 1 ? p.queries.strides[0] : dim;
  const char* rows = static_cast<const char*>(p.vectors.data);
  const int64_t row_bytes = (n > 1 ? p.vectors.strides[0] : dim) * dtype_size(p.vectors.dtype);
  WorkerHeaps heaps;
  for (int64_t q0 = 0; q0 < nq; q0 += group) {
    const int64_t count = std::min(group, nq - q0);
    heaps.reset(threads, count, kept);
    // Rows read in place, several at once, against the group's queries 4 at a time (16 FMA chains on AVX-512).
    parallel_for(n, grain_for(n, threads, 8), threads, [&](int64_t begin, int64_t end, int worker) {
      const void* ptrs[kInnerProductRowsAtOnce];
      int64_t ids[kInnerProductRowsAtOnce];
      float out[kInnerProductRowsAtOnce * kInnerProductFewQueries];
      for (int64_t i = begin; i < end;) {
        int taken = 0;
        for (; taken < kInnerProductRowsAtOnce && i < end; ++i)
          if (!p.mask || p.mask[i]) ptrs[taken] = rows + i * row_bytes, ids[taken++] = i;
        for (int64_t g0 = 0; g0 < count; g0 += kInnerProductFewQueries) {
          const int take = static_cast<int>(std::min<int64_t>(kInnerProductFewQueries, count - g0));
          for (int done = 0; done < taken;) {
            const int scored = kernel.dots_rows(queries + (q0 + g0) * query_stride, query_stride, take, ptrs + done,
                                                taken - done, p.vectors.dtype, dim, out);
            for (int r = 0; r < scored; ++r) {
              const float scale = p.scales ? p.scales[ids[done + r]] : 1.0f;
              for (int g = 0; g < take; ++g) {
                const float score = p.scales ? out[r * take + g] * scale : out[r * take + g];
                offer(heaps.heap(worker, g0 + g), heaps.size(worker, g0 + g), kept, {score, ids[done + r]});
              }
            }
            done += scored;
          }
        }
      }
    });
    for (int64_t g = 0; g < count; ++g)
      heaps.merge(threads, g, p.top_scores + (q0 + g) * k, p.top_indices + (q0 + g) * k);
  }
}

}  // namespace cpu
}  // namespace tokenset
