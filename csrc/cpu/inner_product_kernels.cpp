// Inner products of a few queries with one stored row, once per SIMD level (TOKENSET_SIMD_NS): the row is loaded once
// per vector step and FMA'd into one accumulator per query, then each accumulator's lanes are summed in order.
#include <cstdint>

#include "inner_product_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

template <int G>
static void dots_fixed(const float* queries, int64_t query_stride, const float* row, int64_t dim, float* out) {
  V::type acc[G];
  for (int g = 0; g < G; ++g) acc[g] = V::zero();
  int64_t k = 0;
  for (; k + W <= dim; k += W) {
    const V::type r = V::load(row + k);
    for (int g = 0; g < G; ++g) acc[g] = V::fmadd(V::load(queries + g * query_stride + k), r, acc[g]);
  }
  for (int g = 0; g < G; ++g) {
    float lanes[W];
    V::store(lanes, acc[g]);
    float s = 0.0f;
    for (int i = 0; i < W; ++i) s += lanes[i];
    for (int64_t t = k; t < dim; ++t) s = std::fma(queries[g * query_stride + t], row[t], s);
    out[g] = s;
  }
}

static void dots(const float* queries, int64_t query_stride, int count, const float* row, int64_t dim, float* out) {
  switch (count) {
    case 1: return dots_fixed<1>(queries, query_stride, row, dim, out);
    case 2: return dots_fixed<2>(queries, query_stride, row, dim, out);
    case 3: return dots_fixed<3>(queries, query_stride, row, dim, out);
    case 4: return dots_fixed<4>(queries, query_stride, row, dim, out);
    case 5: return dots_fixed<5>(queries, query_stride, row, dim, out);
    case 6: return dots_fixed<6>(queries, query_stride, row, dim, out);
    case 7: return dots_fixed<7>(queries, query_stride, row, dim, out);
    default: return dots_fixed<kInnerProductGroup>(queries, query_stride, row, dim, out);
  }
}

static void convert(const void* src, int64_t dim, DType dtype, float* dst) {
  convert_row(static_cast<const uint16_t*>(src), dst, dim, dtype);
}

extern const InnerProductKernel inner_product_kernel = {&dots, &convert};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
