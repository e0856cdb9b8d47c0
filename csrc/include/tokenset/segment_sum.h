// Weighted segment sums: out[s] = sum over members i of segment s of w_i x_i, the merge step of every token merging
// method (ToMe's size-weighted averages, DPC-KNN and k-means groups). Members are given as a CSR list (`order`, a
// permutation of the rows grouped by segment, and `starts`), so that each output row is summed by one worker in
// member order: float32 results that are the same on every run, thread count and SIMD level (up to FMA contraction,
// which every path uses). Rows may be float32, float16 or bfloat16; accumulation and output are float32.
#pragma once

#include "tokenset/common.h"

namespace tokenset {

struct SegmentSumParams {
  ArrayView values;                   // [T, d], elements contiguous within a row
  const int64_t* order = nullptr;     // [M] row indices grouped by segment (device memory on CUDA)
  const int64_t* host_order = nullptr;
  const int64_t* starts = nullptr;    // [S + 1] members of segment s: order[starts[s] .. starts[s+1])
  const int64_t* host_starts = nullptr;
  int64_t members = 0;                // M
  int64_t segments = 0;               // S
  const float* weights = nullptr;     // [T] or null (all 1)
  float* out = nullptr;               // [S, d] float32
};

inline void validate(const SegmentSumParams& p) {
  check_token_values(p.values, "values");
  TOKENSET_CHECK(p.members >= 0 && p.segments >= 0, ValueError, "segment_sum: negative sizes");
  TOKENSET_CHECK(p.host_starts && p.starts, ValueError, "segment_sum: starts missing");
  TOKENSET_CHECK(p.members == 0 || (p.host_order && p.order), ValueError, "segment_sum: order missing");
  TOKENSET_CHECK(p.segments == 0 || p.out, ValueError, "segment_sum: output missing");
  TOKENSET_CHECK(p.host_starts[0] == 0, ValueError, "starts[0] must be 0, got ", p.host_starts[0]);
  for (int64_t s = 0; s < p.segments; ++s)
    TOKENSET_CHECK(p.host_starts[s + 1] >= p.host_starts[s], ValueError, "starts must be non-decreasing, but starts[",
                   s + 1, "]=", p.host_starts[s + 1], " < starts[", s, "]=", p.host_starts[s]);
  TOKENSET_CHECK(p.host_starts[p.segments] == p.members, ValueError, "starts[-1]=", p.host_starts[p.segments],
                 " must equal the number of members, ", p.members);
  const int64_t rows = p.values.shape[0];
  for (int64_t i = 0; i < p.members; ++i)
    TOKENSET_CHECK(p.host_order[i] >= 0 && p.host_order[i] < rows, ValueError, "order[", i, "]=", p.host_order[i],
                   " is not a row of values, which has ", rows);
}

inline int64_t workspace_bytes(const SegmentSumParams&) { return 0; }

namespace cpu {
void segment_sum(const SegmentSumParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// One block per segment (grid-stride), threads over the dimension, members in order.
void segment_sum(const SegmentSumParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
