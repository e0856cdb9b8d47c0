// One row's coverage gains, once per SIMD level (TOKENSET_SIMD_NS): subtract, clamp at 0, add, with no FMA and no
// reassociation, so every level computes the same float32 sums as the scalar code and the reference.
#include <cstdint>

#include "coverage_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

static void add_row_gains(const float* row, float best, int64_t cols, float* gains) {
  const V::type b = V::set1(best), zero = V::zero(), minus_one = V::set1(-1.0f);
  int64_t j = 0;
  for (; j + W <= cols; j += W) {
    // row - best, exactly rounded (fma(b, -1, row) is the rounded difference); V::max returns its second operand
    // (0) when the first is NaN.
    const V::type diff = V::fmadd(b, minus_one, V::load(row + j));
    V::store(gains + j, V::add(V::load(gains + j), V::max(diff, zero)));
  }
  for (; j < cols; ++j) {
    const float diff = row[j] - best;
    gains[j] += diff > 0.0f ? diff : 0.0f;
  }
}

extern const CoverageKernel coverage_kernel = {&add_row_gains};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
