// Inner products of queries with stored rows, once per SIMD level (TOKENSET_SIMD_NS): register tiles of rows x
// queries (dots_rows), rows read in place in their dtype.
#include <cmath>
#include <cstdint>

#include "inner_product_kernels.h"
#include "simd.h"

namespace tokenset {
namespace cpu {
namespace TOKENSET_SIMD_NS {

// R rows at once for G queries: R * G independent accumulators (16 on AVX-512) hide the FMA latency and make each
// loaded vector feed several FMAs (4 rows x 4 queries: 8 loads per 16 FMAs), with the conversion from float16 /
// bfloat16 fused into the loads. Each (row, query) sum has one order whatever R and G: lane j takes k = j mod W in
// k order, then the lanes are added in order, then the tail; so a query's scores do not depend on its group.
template <DType D, int G, int R>
static void dots_rows_fixed(const float* queries, int64_t query_stride, const void* const* rows, int64_t dim,
                            float* out) {
  V::type acc[R][G];
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) acc[r][g] = V::zero();
  int64_t k = 0;
  for (; k + W <= dim; k += W) {
    V::type x[R];
    for (int r = 0; r < R; ++r) x[r] = load_as_float<D>(rows[r], k);
    for (int g = 0; g < G; ++g) {
      const V::type q = V::load(queries + g * query_stride + k);
      for (int r = 0; r < R; ++r) acc[r][g] = V::fmadd(q, x[r], acc[r][g]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int g = 0; g < G; ++g) {
      float lanes[W];
      V::store(lanes, acc[r][g]);
      float s = 0.0f;
      for (int i = 0; i < W; ++i) s += lanes[i];
      for (int64_t t = k; t < dim; ++t) s = std::fma(queries[g * query_stride + t], element_to_float(rows[r], t, D), s);
      out[r * G + g] = s;
    }
}

#if defined(TOKENSET_SIMD_AVX512)
constexpr int kAccumulators = 16;  // of 32 registers: the rest hold the rows and the query vector
#else
constexpr int kAccumulators = 8;
#endif

template <DType D, int G>
static int dots_rows_for(const float* queries, int64_t query_stride, const void* const* rows, int count,
                         int64_t dim, float* out) {
  constexpr int R = kAccumulators / G > 0 ? kAccumulators / G : 1;
  if (count >= R) {
    dots_rows_fixed<D, G, R>(queries, query_stride, rows, dim, out);
    return R;
  }
  dots_rows_fixed<D, G, 1>(queries, query_stride, rows, dim, out);
  return 1;
}

template <DType D>
static int dots_rows_typed(const float* queries, int64_t query_stride, int queries_count, const void* const* rows,
                           int count, int64_t dim, float* out) {
  switch (queries_count) {
    case 1: return dots_rows_for<D, 1>(queries, query_stride, rows, count, dim, out);
    case 2: return dots_rows_for<D, 2>(queries, query_stride, rows, count, dim, out);
    case 3: return dots_rows_for<D, 3>(queries, query_stride, rows, count, dim, out);
    default: return dots_rows_for<D, 4>(queries, query_stride, rows, count, dim, out);
  }
}

static int dots_rows(const float* queries, int64_t query_stride, int queries_count, const void* const* rows, int count,
                     DType dtype, int64_t dim, float* out) {
  switch (dtype) {
    case DType::Float16: return dots_rows_typed<DType::Float16>(queries, query_stride, queries_count, rows, count, dim,
                                                                out);
    case DType::BFloat16: return dots_rows_typed<DType::BFloat16>(queries, query_stride, queries_count, rows, count,
                                                                  dim, out);
    case DType::Int8: return dots_rows_typed<DType::Int8>(queries, query_stride, queries_count, rows, count, dim, out);
    default: return dots_rows_typed<DType::Float32>(queries, query_stride, queries_count, rows, count, dim, out);
  }
}

extern const InnerProductKernel inner_product_kernel = {&dots_rows};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
