// Inner-product top-k on the CPU, the driver (compiled once): threads over stored rows, each worker keeps a heap per
// query of the group. Up to 4 queries read the rows in place, several rows at a time; larger groups convert each
// float16 / bfloat16 row once for all their queries.
#include <algorithm>
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
  const int64_t nq = p.queries.shape[0], n = p.vectors.shape[0], dim = p.queries.shape[1], k = p.k;
  const int64_t kept = start_topk(p.top_scores, p.top_indices, nq, k, n);
  if (nq == 0 || kept == 0) return;
  const InnerProductKernel& kernel = TOKENSET_SIMD_KERNEL(inner_product_kernel);
  const int threads = num_threads();
  const int64_t per_query = static_cast<int64_t>(threads) * kept * static_cast<int64_t>(sizeof(TopkEntry) + 8);
  const int64_t group = std::max<int64_t>(1, std::min(nq, kInnerProductHeapBudget / per_query));
  const bool convert = p.vectors.dtype != DType::Float32;
  AlignedBuffer<float> scratch(convert ? static_cast<size_t>(threads * dim) : 0);
  const float* queries = p.queries.ptr<const float>();
  const int64_t query_stride = nq > 1 ? p.queries.strides[0] : dim;
  const char* rows = static_cast<const char*>(p.vectors.data);
  const int64_t row_bytes = (n > 1 ? p.vectors.strides[0] : dim) * dtype_size(p.vectors.dtype);
  WorkerHeaps heaps;
  for (int64_t q0 = 0; q0 < nq; q0 += group) {
    const int64_t count = std::min(group, nq - q0);
    heaps.reset(threads, count, kept);
    if (count <= kInnerProductFewQueries) {
      // Few queries: rows read in place, several at once (more FMA chains than one per query), the same bits.
      parallel_for(n, grain_for(n, threads, 8), threads, [&](int64_t begin, int64_t end, int worker) {
        const void* ptrs[kInnerProductRowsAtOnce];
        int64_t ids[kInnerProductRowsAtOnce];
        float out[kInnerProductRowsAtOnce * kInnerProductFewQueries];
        for (int64_t i = begin; i < end;) {
          int taken = 0;
          for (; taken < kInnerProductRowsAtOnce && i < end; ++i)
            if (!p.mask || p.mask[i]) ptrs[taken] = rows + i * row_bytes, ids[taken++] = i;
          for (int done = 0; done < taken;) {
            const int scored = kernel.dots_rows(queries + q0 * query_stride, query_stride, static_cast<int>(count),
                                                ptrs + done, taken - done, p.vectors.dtype, dim, out);
            for (int r = 0; r < scored; ++r)
              for (int64_t g = 0; g < count; ++g)
                offer(heaps.heap(worker, g), heaps.size(worker, g), kept, {out[r * count + g], ids[done + r]});
            done += scored;
          }
        }
      });
      for (int64_t g = 0; g < count; ++g)
        heaps.merge(threads, g, p.top_scores + (q0 + g) * k, p.top_indices + (q0 + g) * k);
      continue;
    }
    parallel_for(n, grain_for(n, threads, 8), threads, [&](int64_t begin, int64_t end, int worker) {
      float* row32 = convert ? scratch.data() + static_cast<int64_t>(worker) * dim : nullptr;
      float out[kInnerProductGroup];
      for (int64_t i = begin; i < end; ++i) {
        if (p.mask && !p.mask[i]) continue;
        const void* row = rows + i * row_bytes;
        if (convert) kernel.convert(row, dim, p.vectors.dtype, row32);
        const float* r = convert ? row32 : static_cast<const float*>(row);
        for (int64_t g0 = 0; g0 < count; g0 += kInnerProductGroup) {
          const int take = static_cast<int>(std::min<int64_t>(kInnerProductGroup, count - g0));
          kernel.dots(queries + (q0 + g0) * query_stride, query_stride, take, r, dim, out);
          for (int j = 0; j < take; ++j) offer(heaps.heap(worker, g0 + j), heaps.size(worker, g0 + j), kept, {out[j], i});
        }
      }
    });
    for (int64_t g = 0; g < count; ++g)
      heaps.merge(threads, g, p.top_scores + (q0 + g) * k, p.top_indices + (q0 + g) * k);
  }
}

}  // namespace cpu
}  // namespace tokenset
