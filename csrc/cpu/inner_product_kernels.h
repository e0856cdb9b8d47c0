// The per-level inner-product kernel table: defined by inner_product_kernels.cpp (once per SIMD level), picked by the
// driver inner_product.cpp.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/inner_product.h"

namespace tokenset {
namespace cpu {

// Queries scored against one stored row at a time, at most this many together (their accumulators stay in
// registers while the row streams through).
constexpr int kInnerProductGroup = 8;

struct InnerProductKernel {
  // out[g] = <queries[g * query_stride ..], row> for g < count (count <= kInnerProductGroup), dim floats each.
  void (*dots)(const float* queries, int64_t query_stride, int count, const float* row, int64_t dim, float* out);
  // dst[k] = float(src[k]) for k < dim: a float16 / bfloat16 row to float32.
  void (*convert)(const void* src, int64_t dim, DType dtype, float* dst);
  // The same dots for queries_count <= kInnerProductFewQueries queries against up to `count` rows read in place in
  // their dtype: scores rows[0 .. taken) into out[r * queries_count + g], returns how many rows it took (>= 1), the
  // same bits as dots on the converted rows.
  int (*dots_rows)(const float* queries, int64_t query_stride, int queries_count, const void* const* rows, int count,
                   DType dtype, int64_t dim, float* out);
};

// Query groups up to this size take the several-rows path (dots_rows).
constexpr int kInnerProductFewQueries = 4;
// The most rows dots_rows takes at once (16 accumulators of one query).
constexpr int kInnerProductRowsAtOnce = 16;

TOKENSET_DECLARE_SIMD_KERNELS(InnerProductKernel, inner_product_kernel)

}  // namespace cpu
}  // namespace tokenset
