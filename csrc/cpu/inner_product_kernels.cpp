// Inner products of queries with stored rows, once per SIMD level (TOKENSET_SIMD_NS): a row is loaded once per vector
// step and FMA'd into one accumulator per query, then each accumulator's lanes are summed in order. Up to 4 queries
// take several rows at once (dots_rows: more independent FMA chains, conversion fused into the loads), in the same
// order per (row, query).
#include <cmath>
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

// Rows at once for `G` queries: R * G independent accumulators hide the FMA latency that one chain per query pays,
// with the conversion from float16 / bfloat16 fused into the loads. Each (row, query) sum runs in dots_fixed's order
// (lane j takes k = j mod W, then the lanes in order, then the tail), so the scores are the same bits.
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
    default: return dots_rows_typed<DType::Float32>(queries, query_stride, queries_count, rows, count, dim, out);
  }
}

static void convert(const void* src, int64_t dim, DType dtype, float* dst) {
  convert_row(static_cast<const uint16_t*>(src), dst, dim, dtype);
}

extern const InnerProductKernel inner_product_kernel = {&dots, &convert, &dots_rows};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
