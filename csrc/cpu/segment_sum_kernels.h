// The per-level segment-sum kernel table: defined by segment_sum_kernels.cpp (once per SIMD level), picked by the
// driver segment_sum.cpp.
#pragma once

#include <cstdint>

#include "tokenset/cpu_runtime.h"
#include "tokenset/segment_sum.h"

namespace tokenset {
namespace cpu {

struct SegmentSumKernel {
  // out[k] += w * float(row[k]) for k < dim (row of `dtype`, contiguous).
  void (*accumulate)(const void* row, DType dtype, float w, int64_t dim, float* out);
};

TOKENSET_DECLARE_SIMD_KERNELS(SegmentSumKernel, segment_sum_kernel)

}  // namespace cpu
}  // namespace tokenset
