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
//  * residual-coded documents (ResidualDocuments) against float32 queries: query token i is quantised to int8 as
//    tokenset.quantize does (scale s_i), the bucket weights likewise (s_w, codes w8); with the centroid table
//    cs[i, c] = <q_i, C_c> (float32 FMAs in k order) and f_i = s_i * s_w,
//      sim(i, t) = n_t * (cs[i, id_t] + f_i * float(<q8_i, w8[code_t]>)),  the integer dot product exact,
//    n_t the token's 1/||reconstruction||; maxima and sums as for tokens, so every level and device gives the same bits;
//  * a NaN similarity makes that query token's maximum NaN, hence the score NaN (IEEE propagation, as numpy's max);
//  * argmax ties go to the lowest document-token index; top-k ties to the lowest document index, NaN ranks as -inf;
//  * accumulation is float32 whatever the input dtype; float32 dot products are FMAs in k order and the maxima are
//    summed in query-token order on every path, so float32 scores are bit-identical across SIMD levels and devices.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "tokenset/common.h"

namespace tokenset {

// Documents stored as PLAID residual codes (tokenset.ResidualCodes), when bits > 0: documents.values are the packed
// codes (uint8 [rows, dim * bits / 8], residual_codec.h), documents.scales each token's 1/||reconstruction||, and the
// queries float32. Scored through per-query tables, never decompressed (the formula at the top of this file).
struct ResidualDocuments {
  int bits = 0;
  int64_t num_centroids = 0;
  const float* centroids = nullptr;            // [num_centroids, dim] float32 (device memory on CUDA)
  const int32_t* centroid_ids = nullptr;       // [id_count], one per row of documents.values (device memory on CUDA)
  const int32_t* host_centroid_ids = nullptr;  // the same on the host, checked for the documents scored
  const float* host_inverse_norms = nullptr;   // documents.scales on the host, checked likewise
  int64_t id_count = 0;
  float bucket_weights[16] = {};               // 2^bits, by value
  TOKENSET_HOST_DEVICE bool active() const { return bits > 0; }
};

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
  ResidualDocuments residual;

  TOKENSET_HOST_DEVICE int64_t columns() const { return candidates ? num_candidates : documents.count; }
  TOKENSET_HOST_DEVICE bool topk() const { return k > 0; }
};

constexpr int64_t kMaxArgmaxLength = (int64_t(1) << 31) - 1;

// The documents a call scores: all of them, or in pairs mode the candidates (fn(document) for each, repeats included).
template <typename Fn>
inline void for_each_scored_document(const MaxsimParams& p, Fn&& fn) {
  if (p.candidates == nullptr || p.topk()) {
    for (int64_t d = 0; d < p.documents.count; ++d) fn(d);
    return;
  }
  for (int64_t i = 0; i < p.queries.count * p.num_candidates; ++i)
    if (p.host_candidates[i] >= 0) fn(p.host_candidates[i]);
}

// Residual codes: the pairing, the codec's arrays, and the ids and norms of the documents scored (a token per scored
// token read on the host, as the kernel reads them; candidates are checked first, by validate_outputs).
inline void validate_residual(const MaxsimParams& p) {
  const ResidualDocuments& r = p.residual;
  TOKENSET_CHECK(r.bits == 1 || r.bits == 2 || r.bits == 4, ValueError, "residual codes have 1, 2 or 4 bits, got ",
                 r.bits);
  TOKENSET_CHECK(p.queries.dtype() == DType::Float32, TypeError, "queries against residual codes must be float32, got ",
                 dtype_name(p.queries.dtype()));
  TOKENSET_CHECK(p.documents.dtype() == DType::Int8 && p.documents.values.is_unsigned, TypeError,
                 "residual codes must be uint8 (packed by tokenset.ResidualCodec.encode), got ",
                 p.documents.values.is_unsigned ? "uint8" : dtype_name(p.documents.dtype()));
  TOKENSET_CHECK(p.queries.dim() * r.bits == p.documents.dim() * 8, ValueError, "queries have dimension ",
                 p.queries.dim(), " but the codes hold ", p.documents.dim(), " bytes per token, not dim x bits / 8 = ",
                 p.queries.dim() * r.bits / 8.0, ": the codes come from a codec of another dimension or bit width");
  TOKENSET_CHECK(r.num_centroids >= 1 && r.centroids != nullptr, ValueError, "residual codes need their centroids");
  TOKENSET_CHECK(p.documents.count == 0 || (r.centroid_ids && r.host_centroid_ids && r.host_inverse_norms &&
                                            p.documents.scales),
                 ValueError, "residual codes need their centroid ids and inverse norms");
  TOKENSET_CHECK(p.documents.host_offsets[p.documents.count] <= r.id_count &&
                     p.documents.host_offsets[p.documents.count] <= p.documents.scale_count,
                 ValueError, "residual codes: the offsets reach past the centroid ids or the inverse norms");
  TOKENSET_CHECK(p.argmax == nullptr, ValueError, "argmax is not computed against residual codes (decode() them "
                 "for explanations)");
  for (int j = 0; j < (1 << r.bits); ++j)
    TOKENSET_CHECK(std::isfinite(r.bucket_weights[j]), ValueError, "bucket weight ", j, " is not finite");
}

// 1 when x is NaN, infinite or negative (-0.0 passes), else 0: branch-free, so that a loop OR-ing it over an array
// vectorises (the per-token scales and inverse norms are checked this way, then searched for the culprit on failure).
inline uint32_t not_finite_nonnegative(float x) {
  return static_cast<uint32_t>(!(x >= 0.0f)) | static_cast<uint32_t>(!(x <= std::numeric_limits<float>::max()));
}

inline void check_residual_documents(const MaxsimParams& p) {
  const ResidualDocuments& r = p.residual;
  for_each_scored_document(p, [&](int64_t d) {
    const int64_t begin = p.documents.host_offsets[d], end = p.documents.host_offsets[d + 1];
    // A branch-free pass the compiler vectorises (checked token by token with early exits, this took ~5% of a
    // one-query call); the token at fault is looked for only when there is one.
    const int32_t* ids = r.host_centroid_ids;
    const float* norms = r.host_inverse_norms;
    const uint32_t limit = r.num_centroids > INT32_MAX ? 0x80000000u : static_cast<uint32_t>(r.num_centroids);
    uint32_t bad = 0;  // 32-bit lanes throughout: GCC vectorises this form, not one mixing int64 and bool
    for (int64_t t = begin; t < end; ++t)
      bad |= static_cast<uint32_t>(static_cast<uint32_t>(ids[t]) >= limit) | not_finite_nonnegative(norms[t]);
    if (bad == 0) return;
    for (int64_t t = begin; t < end; ++t) {
      TOKENSET_CHECK(r.host_centroid_ids[t] >= 0 && r.host_centroid_ids[t] < r.num_centroids, ValueError,
                     "document ", d, ", token ", t - p.documents.host_offsets[d], ": centroid id ",
                     r.host_centroid_ids[t], " is not in [0, ", r.num_centroids,
                     "): the codes do not belong to this codec");
      TOKENSET_CHECK(std::isfinite(r.host_inverse_norms[t]) && r.host_inverse_norms[t] >= 0.0f, ValueError,
                     "document ", d, ", token ", t - p.documents.host_offsets[d], ": inverse norm ",
                     r.host_inverse_norms[t], " is not a finite number >= 0");
    }
  });
}

// Device, empty queries, mode and outputs (every pairing).
inline void validate_outputs(const MaxsimParams& p) {
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

// Checks everything a kernel will follow, the batches included (offsets, max_length, every set inside its values).
inline void validate(const MaxsimParams& p) {
  check_filled_set_batch(p.queries, "queries", true);
  check_filled_set_batch(p.documents, "documents", true, p.residual.active());
  if (p.residual.active()) {
    validate_residual(p);
    validate_outputs(p);
    check_residual_documents(p);
    return;
  }
  TOKENSET_CHECK(p.queries.dim() == p.documents.dim(), ValueError, "queries have token dimension ", p.queries.dim(),
                 " but documents have ", p.documents.dim());
  const bool float_queries_int8_documents =
      p.documents.dtype() == DType::Int8 && p.queries.dtype() == DType::Float32;
  TOKENSET_CHECK(p.queries.dtype() == p.documents.dtype() || float_queries_int8_documents, TypeError, "queries are ",
                 dtype_name(p.queries.dtype()), " but documents are ", dtype_name(p.documents.dtype()),
                 p.queries.dtype() == DType::Int8 ? "; int8 queries are scored against int8 documents only"
                 : p.documents.dtype() == DType::Int8 ? "; against int8 documents give float32 or int8 queries"
                                                      : "; convert the queries to the documents' dtype");
  validate_outputs(p);
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
