// Inner-product top-k: for every query vector, the k stored vectors with the largest inner product (the single-vector
// search of FDE candidates; exact, brute force, memory-bound: each stored vector is read once per query group).
//
// Semantics: accumulation in float32 whatever the stored dtype (float32, float16, bfloat16, or int8 codes with a
// float32 scale per row: score = scale_j * <q, codes_j>, the sum of the codes' products times the scale, one rounding;
// CPU only); higher first, ties to
// the lower index, NaN ranks as -inf; vectors whose mask entry is 0 are never returned; rows with fewer than k
// eligible vectors end with (-inf, -1). Summation order: lanes of the CPU's vector width, then the lanes in order, so
// scores may differ between SIMD levels and the GPU by float32 rounding (within u * F * sum |q_i v_i|).
#pragma once

#include "tokenset/common.h"

namespace tokenset {

struct InnerProductParams {
  ArrayView queries;  // [nq, F] float32, contiguous along F
  ArrayView vectors;  // [n, F] float32 / float16 / bfloat16 / int8, contiguous along F (rows may be strided)
  const float* scales = nullptr;  // [n] float32 scales of int8 vectors (and only of those)
  const uint8_t* mask = nullptr;  // [n] on the vectors' device, nonzero = eligible; null = all
  int64_t k = 0;
  float* top_scores = nullptr;    // [nq, k]
  int64_t* top_indices = nullptr;  // [nq, k]
};

inline void validate(const InnerProductParams& p) {
  TOKENSET_CHECK(p.queries.ndim == 2 && p.queries.dtype == DType::Float32, ValueError,
                 "queries must be 2-D float32 [nq, F]");
  TOKENSET_CHECK(p.vectors.ndim == 2 && (is_float_dtype(p.vectors.dtype) || p.vectors.dtype == DType::Int8),
                 ValueError, "vectors must be 2-D float32, float16, bfloat16 or int8 [n, F]");
  TOKENSET_CHECK(!(p.vectors.dtype == DType::Int8 && p.vectors.is_unsigned), TypeError,
                 "vectors: uint8 values are not int8 codes (which are signed); build them with tokenset.quantize");
  TOKENSET_CHECK((p.vectors.dtype == DType::Int8) == (p.scales != nullptr), ValueError,
                 p.vectors.dtype == DType::Int8 ? "int8 vectors need scales [n] float32 (one per row)"
                                                : "scales apply to int8 vectors only");
  TOKENSET_CHECK(p.queries.shape[1] == p.vectors.shape[1], ValueError, "queries have ", p.queries.shape[1],
                 " dimensions but vectors have ", p.vectors.shape[1]);
  TOKENSET_CHECK(p.queries.shape[1] >= 1, ValueError, "vectors must have at least one dimension");
  for (const ArrayView* a : {&p.queries, &p.vectors})
    TOKENSET_CHECK(a->shape[0] <= 1 || a->shape[1] == 1 || a->strides[1] == 1, ValueError,
                   "rows must be contiguous; try np.ascontiguousarray");
  TOKENSET_CHECK(p.queries.shape[0] == 0 || p.queries.data, ValueError, "queries: null data pointer");
  TOKENSET_CHECK(p.vectors.shape[0] == 0 || p.vectors.data, ValueError, "vectors: null data pointer");
  TOKENSET_CHECK(p.k >= 1, ValueError, "k must be >= 1, got ", p.k);
  TOKENSET_CHECK(p.queries.shape[0] == 0 || (p.top_scores && p.top_indices), ValueError, "top-k outputs missing");
}

// GPU: one group's chunk scores and running top-k lists (common.h, carve_topk_workspace).
inline int64_t workspace_bytes(const InnerProductParams& p) {
  if (p.queries.shape[0] == 0 || p.k < 1) return 0;
  int64_t bytes = 0;
  carve_topk_workspace(p.queries.shape[0], p.k, nullptr, &bytes);
  return bytes;
}

namespace cpu {
void inner_product_topk(const InnerProductParams& params, const Launch& launch = Launch());
}  // namespace cpu

namespace cuda {
// Same semantics; vectors, queries, mask and outputs in device memory; scores summed by a warp shuffle reduction.
void inner_product_topk(const InnerProductParams& params, const Launch& launch);
}  // namespace cuda

}  // namespace tokenset
