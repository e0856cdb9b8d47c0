// MaxSim: score(q, D) = sum_i max_j <q_i, d_j>, over ragged batches of token sets.
//
// Semantics shared by every backend:
//  * padded tokens do not exist: only rows inside a set's offsets take part;
//  * a document with no tokens scores -inf (argmax -1); a query with no tokens is rejected by the bindings;
//  * a NaN similarity makes that query token's maximum NaN, hence the score NaN (IEEE propagation, as numpy's max);
//  * argmax ties go to the lowest document-token index;
//  * accumulation is float32 whatever the input dtype.
#pragma once

#include "tokenset/common.h"

namespace tokenset {

struct MaxsimParams {
  SetBatch queries;
  SetBatch documents;
  // Pairs mode when non-null: candidates[q * num_candidates + c] is a document index or -1 (no candidate: -inf).
  const int64_t* candidates = nullptr;
  int64_t num_candidates = 0;
  // Output scores: [queries.count, documents.count] (all pairs) or [queries.count, num_candidates] (pairs).
  float* scores = nullptr;
  // Optional: argmax[(q * columns + c) * queries.max_length + i] = index within the document of the token that
  // maximises query token i (-1 for padding query tokens and empty documents).
  int32_t* argmax = nullptr;

  int64_t columns() const { return candidates ? num_candidates : documents.count; }
};

// Queries and documents must share the token dimension (checked by every binding and backend).
inline void check_same_dim(const MaxsimParams& p) {
  if (p.queries.dim != p.documents.dim)
    throw ValueError("queries have dimension " + std::to_string(p.queries.dim) + " but documents have dimension " +
                     std::to_string(p.documents.dim));
}

namespace cpu {
// All pairs or pairs mode (by params.candidates). Multi-threaded, SIMD level chosen at run time.
void maxsim(const MaxsimParams& params);
// Fused top-k over all documents for every query; ties go to the lower document index, NaN ranks as -inf.
// Rows with fewer than k documents are padded with score -inf and index -1.
void maxsim_topk(const MaxsimParams& params, int64_t k, float* top_scores, int64_t* top_indices);
}  // namespace cpu

namespace cuda {
// Same semantics as cpu::maxsim; offsets and candidates point at device memory, launched on `stream`.
void maxsim(const MaxsimParams& params, void* stream);
}  // namespace cuda

}  // namespace tokenset
