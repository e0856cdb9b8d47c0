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
static inline V::type load_as_float(const void* row, int64_t k) {
  if constexpr (D == DType::Float32) {
    return V::load(static_cast<const float*>(row) + k);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(row) + k;
#if defined(TOKENSET_SIMD_AVX512)
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (D == DType::Float16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif defined(TOKENSET_SIMD_AVX2)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (D == DType::Float16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    return D == DType::Float16 ? half_to_float(*p) : bfloat_to_float(*p);
#endif
  }
}

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
