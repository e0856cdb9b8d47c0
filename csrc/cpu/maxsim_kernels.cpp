// MaxSim on the CPU: score(q, D) = sum_i max_j <q_i, d_j>.
//
// This file is compiled once per SIMD level (TOKENSET_SIMD_NS = scalar | avx2 | avx512); each build defines the level's
// kernel table (maxsim_kernels.h). The driver, maxsim.cpp, picks a table and runs it over threads.
//
// Register tiling: a query's tokens are packed once, transposed, as float32 panels P[k][lane] of QB = QV * W tokens
// (zero-padded). A tile of R document tokens is scored against a panel with R * QV vector accumulators: for every
// k, broadcast d_j[k] and FMA it with the panel's vectors. Accumulator row r then holds <q_lane, d_{j0+r}> for the
// panel's QB query tokens, so the max over document tokens is an elementwise vector max: no horizontal reduction,
// no similarity matrix in memory, and document rows are read in place (float32) or converted R rows at a time
// (float16 / bfloat16, or int8 times its row's scale). Common embedding widths (64 ... 1024) get their own copy of the full tile with dim a constant.
//
// Everything here is either in the level namespace or `static`: inline functions shared between translation units
// compiled with different -m flags would let the linker pick an AVX-512 copy for the scalar path.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "maxsim_kernels.h"
#include "simd.h"
#include "tokenset/dispatch.h"

namespace tokenset {
namespace cpu {

namespace TOKENSET_SIMD_NS {

// ---- tile shape per level -------------------------------------------------------------------------------------------
#if defined(TOKENSET_SIMD_AVX512)
constexpr int QV = 2;   // 32 query tokens per panel
constexpr int R = 12;   // 24 accumulators + 2 panel vectors + 1 broadcast of 32 registers
#elif defined(TOKENSET_SIMD_AVX2)
constexpr int QV = 2;   // 16 query tokens per panel
constexpr int R = 6;    // 12 accumulators + 2 panel vectors + 1 broadcast of 16 registers
#else
constexpr int QV = 8;
constexpr int R = 4;
#endif
constexpr int QB = QV * W;

// ---- packing ---------------------------------------------------------------------------------------------------------
static void pack_query(const MaxsimParams& params, int64_t set, float* packed) {
  const SetBatch& queries = params.queries;
  const int64_t length = queries.length(set), dim = queries.dim();
  const int64_t panels = (length + QB - 1) / QB;
  const void* first = queries.set_data(set);
  const int64_t stride = queries.set_stride(set);
  std::memset(packed, 0, sizeof(float) * panels * dim * QB);
  for (int64_t t = 0; t < length; ++t) {
    float* panel = packed + (t / QB) * dim * QB + (t % QB);
    for (int64_t k = 0; k < dim; ++k) panel[k * QB] = element_to_float(first, t * stride + k, queries.dtype());
  }
}

// ---- register tile ---------------------------------------------------------------------------------------------------
// Scores ROWS document rows (rows[r * stride + k]) against one panel and folds them into the running maxima.
// `prefetch` points at the source row that follows this tile (`prefetch_stride` bytes between rows,
// `element_bytes` per element): for float16/bfloat16 `rows` is conversion scratch, so it cannot tell where memory goes.
template <int ROWS, bool kArgmax, int kDim = 0>
static inline void tile(const float* panel, const float* rows, int64_t runtime_stride, int64_t runtime_dim,
                        int32_t first_row, const char* prefetch, int64_t prefetch_stride, int element_bytes,
                        V::type* running_max, V::itype* running_arg, V::mask* nan_seen) {
  // kDim > 0: rows are packed (stride == dim == kDim), so every row's address is one base plus a constant.
  const int64_t dim = kDim > 0 ? kDim : runtime_dim;
  const int64_t stride = kDim > 0 ? kDim : runtime_stride;
  V::type acc[ROWS][QV];
  for (int r = 0; r < ROWS; ++r)
    for (int v = 0; v < QV; ++v) acc[r][v] = V::zero();
  // A single-query scan streams documents from memory once: fetch the next tile's rows (the following rows of the
  // batch, usually contiguous) one cache line per row per 16 k-steps while this tile computes. Into L2, not L1: at
  // dim 384 the query panel alone fills L1, and lines fetched into L1 a tile early evict it (measured +8% at dim 384).
  for (int64_t k0 = 0; k0 < dim; k0 += 16) {
    for (int r = 0; r < ROWS; ++r) __builtin_prefetch(prefetch + r * prefetch_stride + k0 * element_bytes, 0, 2);
    const int64_t k1 = k0 + 16 < dim ? k0 + 16 : dim;
#pragma GCC unroll 4
    for (int64_t k = k0; k < k1; ++k) {
      V::type p[QV];
      for (int v = 0; v < QV; ++v) p[v] = V::load(panel + k * QB + v * W);
      for (int r = 0; r < ROWS; ++r) {
        const V::type b = V::set1(rows[r * stride + k]);
        for (int v = 0; v < QV; ++v) acc[r][v] = V::fmadd(b, p[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    for (int v = 0; v < QV; ++v) {
      nan_seen[v] = V::unordered(acc[r][v], nan_seen[v]);
      if (kArgmax) {
        // Strictly greater: the earlier (lower-index) row keeps a tie.
        const V::mask better = V::greater(acc[r][v], running_max[v]);
        running_max[v] = V::select(better, running_max[v], acc[r][v]);
        running_arg[v] = V::iselect(better, running_arg[v], V::iset1(first_row + r));
      } else {
        running_max[v] = V::max(acc[r][v], running_max[v]);
      }
    }
  }
}

template <int ROWS, bool kArgmax>
static inline void tile_any(int rows_left, const float* panel, const float* rows, int64_t stride, int64_t dim,
                            int32_t first_row, const char* prefetch, int64_t prefetch_stride, int element_bytes,
                            V::type* running_max, V::itype* running_arg, V::mask* nan_seen) {
  if constexpr (ROWS >= 1) {
    if (rows_left == ROWS)
      tile<ROWS, kArgmax>(panel, rows, stride, dim, first_row, prefetch, prefetch_stride, element_bytes, running_max,
                          running_arg, nan_seen);
    else
      tile_any<ROWS - 1, kArgmax>(rows_left, panel, rows, stride, dim, first_row, prefetch, prefetch_stride,
                                  element_bytes, running_max, running_arg, nan_seen);
  }
}

template <bool kArgmax, int kDim = 0>
static void score_impl(const float* packed, int64_t query_length, const SetBatch& docs, int64_t doc, float* scratch,
                       float* score, int32_t* argmax) {
  const int64_t length = docs.length(doc), dim = docs.dim();
  if (length == 0) {
    *score = -std::numeric_limits<float>::infinity();
    if (kArgmax)
      for (int64_t i = 0; i < query_length; ++i) argmax[i] = -1;
    return;
  }
  const char* first = static_cast<const char*>(docs.set_data(doc));
  const int64_t row_stride = docs.set_stride(doc);
  const int64_t panels = (query_length + QB - 1) / QB;
  const int element_bytes = static_cast<int>(dtype_size(docs.dtype()));
  float total = 0.0f;
  for (int64_t c = 0; c < panels; ++c) {
    const float* panel = packed + c * dim * QB;
    V::type running_max[QV];
    V::itype running_arg[QV];
    V::mask nan_seen[QV];
    for (int v = 0; v < QV; ++v) {
      running_max[v] = V::set1(-std::numeric_limits<float>::infinity());
      running_arg[v] = V::iset1(0);  // all similarities -inf: the first token, as numpy's argmax
      nan_seen[v] = V::no_mask();
    }
    for (int64_t j0 = 0; j0 < length; j0 += R) {
      const int rows_left = static_cast<int>(length - j0 < R ? length - j0 : R);
      const float* rows;
      int64_t stride;
      if (docs.dtype() == DType::Float32) {
        rows = reinterpret_cast<const float*>(first) + j0 * row_stride;
        stride = row_stride;
      } else if (docs.dtype() == DType::Int8) {  // float queries, int8 documents: scored dequantised, exactly
        const int8_t* src = reinterpret_cast<const int8_t*>(first) + j0 * row_stride;
        const float* scales = docs.set_scales(doc) + j0;
        for (int r = 0; r < rows_left; ++r) dequantize_row(src + r * row_stride, scales[r], scratch + r * dim, dim);
        rows = scratch;
        stride = dim;
      } else {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(first) + j0 * row_stride;
        for (int r = 0; r < rows_left; ++r) convert_row(src + r * row_stride, scratch + r * dim, dim, docs.dtype());
        rows = scratch;
        stride = dim;
      }
      // Only a hint: an address past the set is never dereferenced.
      const char* prefetch = first + (j0 + R) * row_stride * element_bytes;
      if (rows_left == R)
        tile<R, kArgmax, kDim>(panel, rows, stride, dim, static_cast<int32_t>(j0), prefetch,
                               row_stride * element_bytes, element_bytes, running_max, running_arg, nan_seen);
      else
        tile_any<R - 1, kArgmax>(rows_left, panel, rows, stride, dim, static_cast<int32_t>(j0), prefetch,
                                 row_stride * element_bytes, element_bytes, running_max, running_arg, nan_seen);
    }
    float maxima[QB];
    int32_t args[QB];
    bool nans[QB];
    for (int v = 0; v < QV; ++v) {
      V::store(maxima + v * W, running_max[v]);
      V::istore(args + v * W, running_arg[v]);
      V::store_mask(nans + v * W, nan_seen[v]);
    }
    const int64_t lanes = query_length - c * QB < QB ? query_length - c * QB : QB;
    for (int64_t lane = 0; lane < lanes; ++lane) {
      total += nans[lane] ? std::numeric_limits<float>::quiet_NaN() : maxima[lane];
      if (kArgmax) argmax[c * QB + lane] = args[lane];
    }
  }
  *score = total;
}

static void score(const float* packed, int64_t query_length, const MaxsimParams& params, int64_t doc, float* scratch,
                  float* out, int32_t* argmax) {
  const SetBatch& docs = params.documents;
  if (argmax) return score_impl<true>(packed, query_length, docs, doc, scratch, out, argmax);
  // The embedding widths of common late-interaction models, as compile-time constants: a full tile's 12 row addresses
  // become one base register plus constant offsets, which frees the registers the compiler otherwise spills an
  // accumulator for (+5-9% single-core). Float16/bfloat16 rows are converted into packed scratch, so only float32
  // rows need stride == dim. The scalar level has no tile worth it.
  constexpr bool kCompiledWidths = W > 1;
  if constexpr (kCompiledWidths) {
    if (docs.dtype() != DType::Float32 || docs.set_stride(doc) == docs.dim())
      return TOKENSET_DIM_SWITCH(docs.dim(), kDim, [&] {
        score_impl<false, kDim>(packed, query_length, docs, doc, scratch, out, nullptr);
      });
  }
  score_impl<false>(packed, query_length, docs, doc, scratch, out, nullptr);
}

extern const MaxsimKernel maxsim_kernel = {QB, R, &pack_query, &score};

}  // namespace TOKENSET_SIMD_NS
}  // namespace cpu
}  // namespace tokenset
