// Nearest target token: for every token of query set i, the token of target set i at the least distance, with
// k-center's distances (tokenset/kcenter.h, csrc/cpu/distance.h: cosine 1 - cos, l2 squared, ip -dot; every pair
// summed in k order with one FMA per element, the same bits on every SIMD level and on CUDA). The nearest-centre
// pass of k-means, k-medoids and DPC-KNN and ToMe's bipartite matching, with the argmin fused: no score matrix.
//
// Semantics (the numpy reference is tokenset/reference/nearest.py):
//   index     [Tq] int64, the target's position within its set; ties to the lowest index; a NaN distance counts as
//             +inf, so a query whose distances are all NaN or +inf gets 0; -1 when target set i is empty.
//   distance  (optional) [Tq] float32, that distance (+inf for an empty target set; NaN reported as +inf).
// Query token t of set i is output row queries.offsets[i] - queries.offsets[0] + t.
#pragma once

#include "tokenset/common.h"
#include "tokenset/kcenter.h"

namespace tokenset {

struct NearestParams {
  SetBatch queries;
  SetBatch targets;
  Metric metric = Metric::L2;
  int64_t* index = nullptr;    // [Tq]
  float* distance = nullptr;   // [Tq] or null
};

inline void validate(const NearestParams& p) {
  check_filled_set_batch(p.queries, "queries");
  check_filled_set_batch(p.targets, "targets");
  const int m = static_cast<int>(p.metric);
  TOKENSET_CHECK(m >= 0 && m <= 2, ValueError, "metric must be cosine, l2 or ip (0, 1, 2), got ", m);
  TOKENSET_CHECK(p.queries.count == p.targets.count, ValueError, "nearest: queries have ", p.queries.count,
                 " sets and targets ", p.targets.count, "; query set i is matched against target set i");
  TOKENSET_CHECK(p.queries.dim() == p.targets.dim(), ValueError, "nearest: queries have dimension ", p.queries.dim(),
                 " and targets ", p.targets.dim());
  TOKENSET_CHECK(p.queries.dtype() == p.targets.dtype(), ValueError,
                 "nearest: queries and targets must have one dtype (convert one to the other's)");
  const int64_t tokens = p.queries.count > 0 ? p.queries.host_offsets[p.queries.count] - p.queries.host_offsets[0] : 0;
  TOKENSET_CHECK(tokens == 0 || p.index, ValueError, "nearest: index output missing");
}

// Output rows: the query tokens.
inline int64_t nearest_rows(const NearestParams& p) {
  return p.queries.count > 0 ? p.queries.host_offsets[p.queries.count] - p.queries.host_offsets[0] : 0;
}

// GPU: the targets' row stats (read for cosine only), one float per row up to the targets' last offset (absolute
// rows: gap rows before the first set included).
inline int64_t workspace_bytes(const NearestParams& p) {
  const int64_t tokens = p.targets.count > 0 ? p.targets.host_offsets[p.targets.count] : 0;
  WorkspaceCarver carve;
  carve.take<float>(tokens);
  return carve.used();
}

namespace cpu {
void nearest(const NearestParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// A thread per query token over its target set (the targets' stats computed first): correct, not tuned.
void nearest(const NearestParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
