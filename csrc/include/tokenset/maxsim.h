// MaxSim: score(q, D) = sum_i max_j <q_i, d_j>, over ragged batches of token sets.
//
// Semantics shared by every backend (validate() below is called by the CPU and the CUDA entry alike):
//  * padded tokens do not exist: only rows inside a set's offsets take part;
//  * a document with no tokens scores -inf (argmax -1); a query with no tokens is an error;
//  * queries and documents have the same dtype (the Python layer converts queries to the documents' dtype), or int8
//    documents (a float32 scale per token) are scored against float32 queries, dequantised: bit-identical to float32
//    MaxSim on scale * values;
//  * int8 queries against int8 documents: m_i = max_j float(<q_i, d_j>) * s_j with the dot product exact in int32,
//    score = sum_i t_i * m_i (t_i the query token's scale); scales must be finite and >= 0 (checked);
//  * a NaN similarity makes that query token's maximum NaN, hence the score NaN (IEEE propagation, as numpy's max);
//  * argmax ties go to the lowest document-token index; top-k ties to the lowest document index, NaN ranks as -inf;
//  * accumulation is float32 whatever the input dtype; float32 dot products are FMAs in k order and the maxima are
//    summed in query-token order on every path, so float32 scores are bit-identical across SIMD levels and devices.
#pragma once

#include <string>

#include "tokenset/common.h"

namespace tokenset {

struct MaxsimParams {
  SetBatch queries;
  SetBatch documents;
  // Pairs mode when non-null: candidates[q * num_candidates + c] is a document index or -1 (no candidate: -inf).
  // `candidates` is what the kernel reads (device memory on CUDA), `host_candidates` the same on the host, checked.
  const int64_t* candidates = nullptr;
  const int64_t* host_candidates = nullptr;
  int64_t num_candidates = 0;
  // Output scores: [queries.count, documents.count] (all pairs) or [queries.count, num_candidates] (pairs).
  float* scores = nullptr;
  // Optional: argmax[(q * columns + c) * queries.max_length + i] = index within the document of the token that
  // maximises query token i (-1 for padding query tokens and empty documents).
  int32_t* argmax = nullptr;
  // Top-k mode when k > 0 (scores, argmax and candidates unused): [queries.count, k] each; rows with fewer than k
  // documents end with (-inf, -1).
  int64_t k = 0;
  float* top_scores = nullptr;
  int64_t* top_indices = nullptr;

  TOKENSET_HOST_DEVICE int64_t columns() const { return candidates ? num_candidates : documents.count; }
  TOKENSET_HOST_DEVICE bool topk() const { return k > 0; }
};

constexpr int64_t kMaxArgmaxLength = (int64_t(1) << 31) - 1;

// Checks everything a kernel will follow, the batches included (offsets, max_length, every set inside its values).
inline void validate(const MaxsimParams& p) {
  check_filled_set_batch(p.queries, "queries", true);
  check_filled_set_batch(p.documents, "documents", true);
  TOKENSET_CHECK(p.queries.dim() == p.documents.dim(), ValueError, "queries have token dimension ", p.queries.dim(),
                 " but documents have ", p.documents.dim());
  const bool float_queries_int8_documents =
      p.documents.dtype() == DType::Int8 && p.queries.dtype() == DType::Float32;
  TOKENSET_CHECK(p.queries.dtype() == p.documents.dtype() || float_queries_int8_documents, TypeError, "queries are ",
                 dtype_name(p.queries.dtype()), " but documents are ", dtype_name(p.documents.dtype()),
                 p.queries.dtype() == DType::Int8 ? "; int8 queries are scored against int8 documents only"
                 : p.documents.dtype() == DType::Int8 ? "; against int8 documents give float32 or int8 queries"
                                                      : "; convert the queries to the documents' dtype");
  TOKENSET_CHECK(p.queries.values.device.type == p.documents.values.device.type &&
                     p.queries.values.device.index == p.documents.values.device.index,
                 ValueError, "queries and documents are on different devices; move them to one device first");
  for (int64_t q = 0; q < p.queries.count; ++q)
    TOKENSET_CHECK(p.queries.host_offsets[q + 1] > p.queries.host_offsets[q], ValueError, "query ", q,
                   " has no tokens: an empty query has no MaxSim score; drop it");
  if (p.topk()) {
    TOKENSET_CHECK(p.candidates == nullptr, ValueError, "maxsim_topk scores all documents; candidates are not supported");
    TOKENSET_CHECK(p.queries.count == 0 || (p.top_scores && p.top_indices), ValueError, "top-k outputs missing");
    return;
  }
  TOKENSET_CHECK(p.k == 0, ValueError, "k must be >= 1, got ", p.k);
  if (p.candidates) {
    TOKENSET_CHECK(p.host_candidates != nullptr, ValueError, "candidates not given on the host for checking");
    TOKENSET_CHECK(p.num_candidates >= 0, ValueError, "negative number of candidates");
    for (int64_t i = 0; i < p.queries.count * p.num_candidates; ++i) {
      const int64_t c = p.host_candidates[i];
      TOKENSET_CHECK(c >= -1 && c < p.documents.count, ValueError, "candidates[", i / p.num_candidates, ", ",
                     i % p.num_candidates, "] = ", c, " is not a document index in [0, ", p.documents.count,
                     ") or -1 (no candidate)");
    }
  }
  TOKENSET_CHECK(p.queries.count * p.columns() == 0 || p.scores != nullptr, ValueError, "scores output missing");
  // argmax is int32 (half the memory of int64 for the largest output tokenset writes): a longer document would wrap.
  TOKENSET_CHECK(p.argmax == nullptr || p.documents.max_length <= kMaxArgmaxLength, ValueError, "a document has ",
                 p.documents.max_length, " tokens; argmax indices are int32, so return_argmax needs documents of at "
                 "most 2^31 - 1 tokens (split longer documents)");
}

// GPU top-k: documents are scored in chunks for groups of queries, merged into running lists (common.h,
// carve_topk_workspace).
inline TopkWorkspace carve_topk_workspace(const MaxsimParams& p, void* base, int64_t* bytes) {
  return carve_topk_workspace(p.queries.count, p.k, base, bytes);
}

// Bytes of device workspace the CUDA entry needs for these params (0: none).
inline int64_t workspace_bytes(const MaxsimParams& p) {
  if (!p.topk() || p.queries.count == 0) return 0;
  int64_t bytes = 0;
  carve_topk_workspace(p, nullptr, &bytes);
  return bytes;
}

namespace cpu {
// All pairs, pairs mode or top-k mode. Multi-threaded, SIMD level chosen at run time; `launch` unused.
void maxsim(const MaxsimParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// Same semantics as cpu::maxsim; offsets and candidates point at device memory; launched on launch.stream.
void maxsim(const MaxsimParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
