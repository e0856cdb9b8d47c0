// The per-level inner-product kernel table: defined by inner_product_kernels.cpp (once per SIMD level), picked by the
// driver inner_product.cpp.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/inner_product.h"

namespace tokenset {
namespace cpu {

// Queries per register tile (the driver runs a group's queries through it 4 at a time) and the most rows one call
// takes (16 accumulators of one query).
constexpr int kInnerProductFewQueries = 4;
constexpr int kInnerProductRowsAtOnce = 16;

struct InnerProductKernel {
  // Scores of queries_count <= kInnerProductFewQueries queries against up to `count` rows read in place in their
  // dtype: rows[0 .. taken) into out[r * queries_count + g]; returns how many rows it took (>= 1). Each (row, query)
  // is summed in one order (vector lanes along k, lanes in order, the tail), whatever the tile. int8 rows are summed
  // as their codes (the driver multiplies by the row's scale).
  int (*dots_rows)(const float* queries, int64_t query_stride, int queries_count, const void* const* rows, int count,
                   DType dtype, int64_t dim, float* out);
};

TOKENSET_DECLARE_SIMD_KERNELS(InnerProductKernel, inner_product_kernel)

}  // namespace cpu
}  // namespace tokenset
