// The per-level coverage kernel table: defined by coverage_kernels.cpp (once per SIMD level), picked by the driver
// coverage.cpp.
#pragma once

#include <cstdint>

#include "tokenset/coverage.h"
#include "tokenset/cpu_runtime.h"

namespace tokenset {
namespace cpu {

struct CoverageKernel {
  // gains[j] += max(0, row[j] - best) for j < cols (NaN terms are 0): one row's contribution, in order.
  void (*add_row_gains)(const float* row, float best, int64_t cols, float* gains);
};

TOKENSET_DECLARE_SIMD_KERNELS(CoverageKernel, coverage_kernel)

}  // namespace cpu
}  // namespace tokenset
