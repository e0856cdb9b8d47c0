// Nearest target token on the CPU, the driver (compiled once): work items are (set, chunk of query tokens), handed to
// the threads in order, so one large set and many small ones both use every thread. Results do not depend on the
// chunking: every query's distances are summed alone, in k order. Each item packs its queries once
// and streams its target set through the GEMM tiles in blocks (nearest_kernels.cpp). Memory: per worker one item's
// scratch (nearest_scratch_floats: 32 to 1,024 queries' panels, at most 4 MiB unless 32 queries alone exceed it, and
// one block of 108 target rows), never queries x targets.
#include <algorithm>
#include <vector>

#include "nearest_kernels.h"
#include "parallel.h"
#include "tokenset/nearest.h"

namespace tokenset {
namespace cpu {
namespace {

constexpr int64_t kQueryChunkFloats = int64_t(1) << 20;  // a chunk's packed queries: 4 MiB at most

}  // namespace

void nearest(const NearestParams& p, const Launch&) {
  validate(p);
  const SetBatch& queries = p.queries;
  const SetBatch& targets = p.targets;
  const int64_t count = queries.count, dim = queries.dim();
  if (count == 0 || nearest_rows(p) == 0) return;
  const NearestKernel& kernel = TOKENSET_SIMD_KERNEL(nearest_kernel);
  // Query tokens per item: enough items for every thread (about four each), as few as that allows, since each item
  // packs its set's targets once; at most kQueryChunkFloats of packed queries (and 1,024 tokens).
  const int threads = num_threads();
  const int64_t cap = std::clamp<int64_t>(kQueryChunkFloats / dim / kNearestQueryAlign * kNearestQueryAlign,
                                          kNearestQueryAlign, 1024);
  const int64_t share = (nearest_rows(p) + 4 * threads - 1) / (4 * threads);
  const int64_t chunk = std::clamp<int64_t>((share + kNearestQueryAlign - 1) / kNearestQueryAlign * kNearestQueryAlign,
                                            kNearestQueryAlign, cap);
  // item_base[i]: the first work item of set i (a set of n query tokens has ceil(n / chunk) items).
  std::vector<int64_t> item_base(count + 1, 0);
  for (int64_t i = 0; i < count; ++i) item_base[i + 1] = item_base[i] + (queries.length(i) + chunk - 1) / chunk;
  const int64_t items = item_base[count];
  const int workers = static_cast<int>(std::min<int64_t>(threads, items));
  const int64_t per_worker = nearest_scratch_floats(dim, chunk);
  AlignedBuffer<float> scratch(static_cast<size_t>(workers) * per_worker);
  const int64_t first_row = queries.host_offsets[0];
  parallel_for(items, 1, workers, [&](int64_t b, int64_t e, int worker) {
    int64_t set = std::upper_bound(item_base.begin(), item_base.end(), b) - item_base.begin() - 1;
    for (int64_t item = b; item < e; ++item) {
      while (item >= item_base[set + 1]) ++set;
      const KcenterRows q{queries.set_data(set), queries.set_stride(set), queries.length(set), dim, queries.dtype()};
      const KcenterRows t{targets.set_data(set), targets.set_stride(set), targets.length(set), dim, targets.dtype()};
      const int64_t q0 = (item - item_base[set]) * chunk, q1 = std::min(q.count, q0 + chunk);
      const int64_t row = queries.host_offsets[set] - first_row + q0;
      kernel.nearest_chunk(q, q0, q1, t, p.metric, scratch.data() + worker * per_worker, p.index + row,
                           p.distance ? p.distance + row : nullptr);
    }
  });
}

}  // namespace cpu
}  // namespace tokenset
