// One weighted row added into an output row, once per SIMD level (TOKENSET_SIMD_NS): float16 / bfloat16 converted in
// registers, one FMA per element.
#include <cmath>
#include <cstdint>

#include "segment_sum_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

template <DType D>
static void accumulate_typed(const void* row, float w, int64_t dim, float* out) {
  const V::type weight = V::set1(w);
  int64_t k = 0;
  for (; k + W <= dim; k += W) V::store(out + k, V::fmadd(weight, load_as_float<D>(row, k), V::load(out + k)));
  for (; k < dim; ++k) out[k] = std::fma(w, element_to_float(row, k, D), out[k]);
}

static void accumulate(const void* row, DType dtype, float w, int64_t dim, float* out) {
  switch (dtype) {
    case DType::Float16: return accumulate_typed<DType::Float16>(row, w, dim, out);
    case DType::BFloat16: return accumulate_typed<DType::BFloat16>(row, w, dim, out);
    default: return accumulate_typed<DType::Float32>(row, w, dim, out);
  }
}

extern const SegmentSumKernel segment_sum_kernel = {&accumulate};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
